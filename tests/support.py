"""Shared test helpers, importable from every test folder as ``support``.

``tests/`` is on ``sys.path`` because the root ``conftest.py`` lives there in a folder without
``__init__.py`` (pytest's default ``prepend`` import mode), so ``from support import eventually``
works from ``tests/e2e`` as well as from ``tests/runtime``.

``eventually`` is the one way tests wait for something that happens on another task, thread or
process: it polls a condition until it holds or a deadline passes, and fails naming what it awaited
and the last value it saw. A sleep is never synchronisation; the interval is only how often to look.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["eventually", "eventually_sync"]


def _describe(condition: Callable[..., Any]) -> str:
    """The condition's source line (for a lambda) or its name: what the failure says was awaited."""
    try:
        return " ".join(inspect.getsource(condition).split())
    except (OSError, TypeError):
        return getattr(condition, "__qualname__", repr(condition))


class _Poll:
    """One wait's bookkeeping, shared by both flavours: the deadline and the last observation."""

    def __init__(self, condition, until, timeout: float, what: str | None) -> None:
        self.condition, self.until, self.timeout, self.what = condition, until, timeout, what
        self.deadline = time.monotonic() + timeout
        self.last: object = None
        self.error: BaseException | None = None

    def holds(self, value: object) -> bool:
        self.last, self.error = value, None
        return bool(self.until(value))

    def raised(self, error: BaseException) -> None:
        self.error = error

    def check_deadline(self) -> None:
        if time.monotonic() < self.deadline:
            return
        seen = f"last raised {self.error!r}" if self.error is not None else f"last observed {self.last!r}"
        what = self.what or _describe(self.condition)
        raise AssertionError(f"not reached within {self.timeout:g} s: {what}; {seen}")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Await until ``until(condition())`` holds; return the value that satisfied it.

    ``condition`` may be sync or async (a coroutine it returns is awaited; any other value, a future
    included, is the observation). It is evaluated at least once, even with a zero timeout.
    Exceptions of the types in ``ignoring`` count as "not yet" (e.g. connection refused while a
    server starts); any other exception fails at once. On timeout an ``AssertionError`` names
    ``what`` (or the condition's source) and the last value or exception observed.
    """
    poll = _Poll(condition, until, timeout, what)
    while True:
        try:
            value = condition()
            if inspect.iscoroutine(value):  # an async condition; a future it returns is a value
                value = await value
        except ignoring as exc:
            poll.raised(exc)
        else:
            if poll.holds(value):
                return value
        poll.check_deadline()
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """The blocking flavour of ``eventually``, for code that runs no event loop (threads, processes)."""
    poll = _Poll(condition, until, timeout, what)
    while True:
        try:
            value = condition()
        except ignoring as exc:
            poll.raised(exc)
        else:
            if poll.holds(value):
                return value
        poll.check_deadline()
        time.sleep(interval)
