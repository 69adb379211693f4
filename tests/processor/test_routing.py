import collections

import pytest

from inference_graph.core.spec import RoutingStrategy as SpecStrategy
from inference_graph.processing import (
    STRATEGIES,
    KvRouterStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    RouterUnavailable,
    make_strategy,
)


async def _no_router(token_ids, instances):
    raise RouterUnavailable("no responders")


def test_registry_covers_the_spec_names():
    assert set(STRATEGIES) == {s.value for s in SpecStrategy}
    for name in STRATEGIES:
        params = {"decide": _no_router} if name == "kv" else {}
        assert make_strategy(name, **params).name == name
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


async def test_kv_strategy_uses_the_routers_choice():
    calls = []

    async def decide(token_ids, instances):  # an in-memory router: the worker holding the prefix
        calls.append((list(token_ids), list(instances)))
        return "w-2"

    strategy = KvRouterStrategy(decide)
    assert [await strategy.pick([1, 2, 3], ["w-1", "w-2", "w-3"]) for _ in range(3)] == ["w-2"] * 3
    assert calls[0] == ([1, 2, 3], ["w-1", "w-2", "w-3"])
    assert (strategy.decisions, strategy.fallbacks) == (3, 0)


async def test_kv_strategy_falls_back_to_round_robin_visibly(caplog):
    strategy = KvRouterStrategy(_no_router)
    with caplog.at_level("WARNING", logger="inference_graph.processing.routing"):
        picks = [await strategy.pick([1], ["w-b", "w-a"]) for _ in range(4)]
    assert picks == ["w-a", "w-b", "w-a", "w-b"]
    assert strategy.fallbacks == 4
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "falls back" in warnings[0].getMessage()


async def test_kv_strategy_falls_back_when_the_router_names_a_stale_instance():
    async def decide(token_ids, instances):
        return "gone"

    strategy = KvRouterStrategy(decide)
    assert await strategy.pick([1], ["w-a"]) == "w-a"
    assert strategy.fallbacks == 1


async def test_kv_strategy_resumes_after_the_router_returns():
    up = False

    async def decide(token_ids, instances):
        if not up:
            raise RouterUnavailable("timeout")
        return "w-b"

    strategy = KvRouterStrategy(decide)
    await strategy.pick([1], ["w-a", "w-b"])
    up = True
    assert await strategy.pick([1], ["w-a", "w-b"]) == "w-b"
    assert (strategy.decisions, strategy.fallbacks) == (1, 1)


def test_the_worker_directory_skips_draining_workers():
    from inference_graph import wire
    from inference_graph.processing.remote import DiscoveryWorkerDirectory

    class Watch:
        instances = {
            "w-1": wire.InstanceInfo("w-1", "ns", "decode", model="m"),
            "w-2": wire.InstanceInfo("w-2", "ns", "decode", model="m", draining=True),
            "w-3": wire.InstanceInfo("w-3", "ns", "decode", model="other"),
        }

        def add_listener(self, callback):
            self.callback = callback

    watch = Watch()
    directory = DiscoveryWorkerDirectory(watch, "m")
    assert directory.instances() == ["w-1"]
    watch.instances = {**watch.instances, "w-2": wire.InstanceInfo("w-2", "ns", "decode", model="m")}
    watch.callback("added", watch.instances["w-2"])
    assert directory.instances() == ["w-1", "w-2"]
