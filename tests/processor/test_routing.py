import collections

import pytest

from inference_graph.core.spec import RoutingStrategy as SpecStrategy
from inference_graph.roles.processor import STRATEGIES, RandomStrategy, RoundRobinStrategy, make_strategy


def test_registry_covers_the_spec_names():
    assert set(STRATEGIES) == {s.value for s in SpecStrategy}
    for name in STRATEGIES:
        assert make_strategy(name).name == name
    with pytest.raises(ValueError, match="unknown routing strategy"):
        make_strategy("kv-magic")


async def test_round_robin_alternates_in_stable_order():
    strategy = RoundRobinStrategy()
    picks = [await strategy.pick([1, 2], ["w-b", "w-a"]) for _ in range(4)]
    assert picks == ["w-a", "w-b", "w-a", "w-b"]
    assert await strategy.pick([], ["only"]) == "only"


async def test_random_spreads_and_is_reproducible():
    first, second = RandomStrategy(seed=7), RandomStrategy(seed=7)
    many = [await first.pick([], ["a", "b", "c"]) for _ in range(300)]
    assert many == [await second.pick([], ["a", "b", "c"]) for _ in range(300)]
    counts = collections.Counter(many)
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 60
