"""The router's index equals the union of the workers' caches: random workloads on simulated
engines with evictions, a worker that dies, lost batches, and a router that restarts.

Real parts: NATS, the simulated engine (its cache and KV events), the worker's ``KvMirror``
and ``kv_snapshot`` endpoint, the router's ``RouterService`` and snapshot fetcher.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from inference_graph import wire
from inference_graph.roles.router.service import RouterService, snapshot_fetcher
from inference_graph.runtime.request_plane import EndpointClient
from support import eventually

pytestmark = pytest.mark.timeout(60)

BS = 16
PREFIXES = [[10 + p * 40 + i % 37 for i in range(3 * BS)] for p in range(4)]  # 3 blocks each


async def random_workload(workers, rng: random.Random, requests: int) -> None:
    """Shared prefixes + unique suffixes, several at once per worker: the small caches evict."""

    async def one(worker, i: int) -> None:
        prompt = rng.choice(PREFIXES) + [rng.randrange(4, 500) for _ in range(rng.randrange(1, 3 * BS))]
        sampling = wire.SamplingOptions(max_tokens=rng.randrange(1, 2 * BS), temperature=0.0, ignore_eos=True)
        request = wire.GenerateRequest(f"r{i}-{rng.random()}", prompt, sampling)
        async for _ in worker.engine.generate(request):
            pass

    await asyncio.gather(*(one(rng.choice(workers), i) for i in range(requests)))


def index_view(router: RouterService) -> dict[str, set[int]]:
    return {w: router.index.router_hashes(w) for w in router.index.workers() if router.index.router_hashes(w)}


def caches(workers) -> dict[str, set[int]]:
    return {w.instance_id: w.cached() for w in workers if w.cached()}


async def until_equal(router: RouterService, workers, timeout: float = 10.0) -> None:
    """Events are asynchronous: wait (with a deadline) for the index to match the caches."""
    await eventually(
        lambda: (index_view(router), caches(workers)),
        until=lambda seen: seen[0] == seen[1],
        timeout=timeout,
        what="the router's index to equal the workers' caches (index, caches)",
    )
    assert caches(workers), "the workload cached nothing: the test checks nothing"


async def start_router(nc, namespace, client: EndpointClient, workers) -> RouterService:
    router = RouterService(BS, seed=0, fetch_snapshot=snapshot_fetcher(client, BS))
    await router.subscribe(nc, namespace)
    await router.rebuild([w.instance_id for w in workers])
    return router


async def test_index_matches_the_caches_through_evictions_death_loss_and_restart(nc, namespace, sim_workers):
    rng = random.Random(7)
    workers = await sim_workers(3, block_size=BS, num_kv_blocks=24)  # ~3 requests fill a cache
    client = EndpointClient(nc, namespace, "decode")
    router = await start_router(nc, namespace, client, workers)
    assert router.ready

    # 1. Random workloads with evictions, router listening all along.
    await random_workload(workers, rng, 40)
    await until_equal(router, workers)
    assert router.index.stats().unknown_removals == 0
    assert all(w.removed_blocks for w in workers)  # evictions happened and were applied

    # 2. A worker dies: discovery removes it, the index forgets it at once.
    dead = workers.pop()
    await dead.stop()
    router.on_instance_event("removed", wire.InstanceInfo(dead.instance_id, namespace, "decode", "mock"))
    assert dead.instance_id not in index_view(router)
    await until_equal(router, workers)

    # 3. Lost batches: the router misses everything one worker says for a while, then hears a gap.
    deaf_to = workers[0].instance_id
    hear = router.on_kv_batch
    router.on_kv_batch = lambda b: None if b.instance_id == deaf_to else hear(b)
    await router.unsubscribe()
    await router.subscribe(nc, namespace)
    await random_workload(workers, rng, 20)
    router.on_kv_batch = hear
    await router.unsubscribe()
    await router.subscribe(nc, namespace)
    await random_workload(workers, rng, 20)  # the first batch it hears from w0 is a gap -> snapshot
    await until_equal(router, workers)
    assert router.resyncs >= 1
    assert router.snapshots > len(workers)  # the rebuild's plus the resync's

    # 4. The router restarts while the workers keep serving; the new one rebuilds from snapshots.
    await router.unsubscribe()
    await random_workload(workers, rng, 20)  # nobody listens
    restarted = await start_router(nc, namespace, client, workers)
    assert index_view(restarted) == caches(workers)  # rebuilt before answering anything
    await random_workload(workers, rng, 20)
    await until_equal(restarted, workers)
    assert restarted.resyncs == 0  # snapshot seq + live batches joined without a gap
    await restarted.unsubscribe()
    await client.close()
