"""The shared ``eventually`` helper: returns what satisfied it, fails naming what it awaited and saw."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from support import eventually, eventually_sync


async def test_returns_the_value_that_satisfied_the_condition():
    counter = itertools.count()
    assert await eventually(lambda: next(counter), until=lambda n: n >= 3, interval=0) == 3


async def test_awaits_an_async_condition():
    counter = itertools.count()

    async def read() -> int:
        return next(counter)

    assert await eventually(read, until=lambda n: n == 2, interval=0) == 2


async def test_failure_names_what_was_awaited_and_the_last_value():
    with pytest.raises(AssertionError, match=r"within 0\.05 s: the answer; last observed 41"):
        await eventually(lambda: 41, until=lambda n: n == 42, timeout=0.05, what="the answer")


async def test_failure_without_a_name_quotes_the_condition():
    with pytest.raises(AssertionError, match=r"lambda: \[\].*last observed \[\]"):
        await eventually(lambda: [], timeout=0)


async def test_a_future_returned_by_a_sync_condition_is_a_value_not_awaited():
    never = asyncio.get_running_loop().create_future()
    assert await eventually(lambda: never, timeout=1) is never


def test_ignored_exceptions_mean_not_yet_and_are_reported():
    calls = itertools.count()

    def flaky() -> str:
        if next(calls) < 2:
            raise ConnectionError("refused")
        return "up"

    assert eventually_sync(flaky, ignoring=(ConnectionError,), interval=0) == "up"
    with pytest.raises(AssertionError, match=r"last raised KeyError\('key'\)"):
        eventually_sync(lambda: {}["key"], timeout=0, ignoring=(KeyError,))


def test_other_exceptions_fail_at_once():
    with pytest.raises(ZeroDivisionError):
        eventually_sync(lambda: 1 / 0, timeout=60)
