"""Which worker instance serves a request: the ``RoutingStrategy`` plug-ins.

Every strategy has the same async ``pick`` signature, so KV-aware strategies
(which await an index and read the prompt's token ids) plug in unchanged.
``STRATEGIES`` is the one registry, keyed by the names used in the graph spec
(``spec.routing.strategy``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol


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


STRATEGIES: dict[str, Callable[..., RoutingStrategy]] = {
    RandomStrategy.name: RandomStrategy,
    RoundRobinStrategy.name: RoundRobinStrategy,
}


def make_strategy(name: str, **parameters: Any) -> RoutingStrategy:
    """Build the strategy registered as ``name`` with its ``parameters``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return factory(**parameters)
