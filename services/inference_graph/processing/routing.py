"""Which worker instance serves a request: the ``RoutingStrategy`` plug-ins.

Every strategy has the same async ``pick`` signature, so KV-aware strategies
(which await an index and read the prompt's token ids) plug in unchanged.
``STRATEGIES`` is the one registry, keyed by the names used in the graph spec
(``spec.routing.strategy``).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


class RoutingStrategy(Protocol):
    name: str

    async def pick(self, token_ids: list[int], instances: Sequence[str]) -> str:
        """Choose one of ``instances`` (never empty) for a prompt of ``token_ids``."""
        ...


class RandomStrategy:
    """Uniformly random; ``seed`` makes the sequence of picks reproducible."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    async def pick(self, token_ids: list[int], instances: Sequence[str]) -> str:
        return self._rng.choice(instances)


class RoundRobinStrategy:
    """Cycles over the instances in sorted order, so a reordered snapshot does not skew it."""

    name = "round-robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    async def pick(self, token_ids: list[int], instances: Sequence[str]) -> str:
        ordered = sorted(instances)
        return ordered[next(self._counter) % len(ordered)]


class RouterUnavailable(Exception):
    """The KV router could not answer (no router running, timeout, error); the caller falls back."""


# (token_ids, candidate instances) -> the instance the KV router chose; raises RouterUnavailable.
DecideFn = Callable[[list[int], Sequence[str]], Awaitable[str]]


class KvRouterStrategy:
    """Asks the KV-aware router (``roles.router``, endpoint ``decide``) through ``decide``.

    ``decide`` does the I/O (the processor's ``__main__`` builds it over the
    request plane), so this class stays testable in memory. When the router
    cannot answer, or answers with an instance that is not a candidate any more,
    the request is routed round-robin instead: never silently - ``fallbacks``
    counts those requests, and a warning is logged when falling back starts
    (and an info line when the router answers again).
    """

    name = "kv"

    def __init__(self, decide: DecideFn, fallback: RoutingStrategy | None = None) -> None:
        self._decide = decide
        self._fallback = fallback or RoundRobinStrategy()
        self.fallbacks = 0  # requests routed by the fallback
        self.decisions = 0  # requests routed by the router
        self._degraded = False

    async def pick(self, token_ids: list[int], instances: Sequence[str]) -> str:
        try:
            chosen = await self._decide(token_ids, instances)
        except RouterUnavailable as exc:
            return await self._fall_back(token_ids, instances, f"router unavailable: {exc}")
        if chosen not in instances:
            return await self._fall_back(token_ids, instances, f"router chose unknown instance {chosen!r}")
        if self._degraded:
            self._degraded = False
            log.info("KV router answers again; KV-aware routing resumed after %d fallbacks", self.fallbacks)
        self.decisions += 1
        return chosen

    async def _fall_back(self, token_ids: list[int], instances: Sequence[str], why: str) -> str:
        self.fallbacks += 1
        if not self._degraded:
            self._degraded = True
            log.warning("KV routing falls back to %s (%s)", self._fallback.name, why)
        return await self._fallback.pick(token_ids, instances)


STRATEGIES: dict[str, Callable[..., RoutingStrategy]] = {
    RandomStrategy.name: RandomStrategy,
    RoundRobinStrategy.name: RoundRobinStrategy,
    KvRouterStrategy.name: KvRouterStrategy,
}


def make_strategy(name: str, **parameters: Any) -> RoutingStrategy:
    """Build the strategy registered as ``name`` with its ``parameters``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return factory(**parameters)
