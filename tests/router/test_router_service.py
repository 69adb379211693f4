"""The router role's logic over a real NATS: KV events in, ``decide`` answers out."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_graph import wire
from inference_graph.processing import RouterUnavailable
from inference_graph.processing.remote import NatsRouterClient
from inference_graph.roles.router.service import DECIDE_ENDPOINT, RouterService
from inference_graph.runtime.errors import NoRespondersError
from inference_graph.runtime.event_plane import EventPublisher
from inference_graph.runtime.request_plane import EndpointClient, EndpointServer
from support import eventually

BS = 16
PREFIX_A = list(range(1000, 1064))  # 4 full blocks
PREFIX_B = list(range(2000, 2064))


def stored(engine_hashes, tokens, parent=None) -> wire.BlockStored:
    return wire.BlockStored(
        block_hashes=engine_hashes, parent_block_hash=parent, token_ids=tokens, block_size=BS
    )


def batch(worker, seq, events) -> wire.KvEventBatch:
    return wire.KvEventBatch(instance_id=worker, seq=seq, timestamp=time.time(), events=events)


@pytest.fixture
async def router(nc, namespace):
    service = RouterService(BS, seed=1)
    await service.subscribe(nc, namespace)
    server = EndpointServer(nc, namespace, "router", "router-1")
    await server.serve(DECIDE_ENDPOINT, service.make_decide_handler())
    client = EndpointClient(nc, namespace, "router")
    yield service, NatsRouterClient(client, timeout=2.0)
    await client.close()
    await server.stop(drain_timeout=1)
    await service.unsubscribe()


async def test_decide_picks_the_worker_holding_the_prefix(nc, namespace, router):
    service, decide = router
    a, b = EventPublisher(nc, namespace, "w-a"), EventPublisher(nc, namespace, "w-b")
    await a.publish_kv([stored([11, 12, 13, 14], PREFIX_A)])
    await b.publish_kv([stored([21, 22], PREFIX_B[:32])])
    await b.publish_kv([stored([23, 24], PREFIX_B[32:], parent=22)])
    await eventually(lambda: service.index.stats().per_worker, until=lambda n: n == {"w-a": 4, "w-b": 4})

    workers = ["w-a", "w-b", "w-c"]
    for _ in range(5):
        assert await decide([*PREFIX_A, 7, 8, 9], workers) == "w-a"
        assert await decide([*PREFIX_B, 7, 8, 9], workers) == "w-b"
    # The answer on the wire carries the expected hit.
    answer = service.decide([*PREFIX_A, 7], workers)
    assert (answer.worker, answer.overlap_blocks, answer.expected_hit_tokens) == ("w-a", 4, 64)

    # Removals apply: w-a loses its last two blocks.
    await a.publish_kv([wire.BlockRemoved([13, 14])])
    await eventually(lambda: service.index.stats().per_worker, until=lambda n: n["w-a"] == 2)
    assert service.decide([*PREFIX_A, 7], workers).overlap_blocks == 2


async def test_load_breaks_ties_between_empty_workers(nc, namespace, router):
    service, decide = router
    busy = EventPublisher(nc, namespace, "w-busy")
    await busy.publish_load(wire.LoadMetrics("w-busy", time.time(), running=30, waiting=5, kv_usage=0.9))
    await eventually(lambda: service.load, until=lambda load: "w-busy" in load)
    assert await decide([1, 2, 3], ["w-busy", "w-idle"]) == "w-idle"


async def test_a_worker_leaving_discovery_leaves_the_index(router):
    service, _ = router
    service.on_kv_batch(batch("w-a", 1, [stored([11, 12, 13, 14], PREFIX_A)]))
    info = wire.InstanceInfo(instance_id="w-a", namespace="n", component="decode", model="m")
    service.on_instance_event("removed", info)
    assert len(service.index) == 0
    assert service.decide(PREFIX_A, ["w-a", "w-b"]).expected_hit_tokens == 0


def test_late_start_resync_keeps_accepting_the_workers_batches():
    service = RouterService(BS)
    # A router that started late first hears seq 7: a gap, retried on an empty state and applied.
    service.on_kv_batch(batch("w-a", 7, [stored([11, 12], PREFIX_A[:32])]))
    assert service.resyncs == 1
    assert service.index.stats().per_worker == {"w-a": 2}
    service.on_kv_batch(batch("w-a", 8, [stored([13, 14], PREFIX_A[32:], parent=12)]))
    assert service.index.stats().per_worker == {"w-a": 4}
    assert not service.index.needs_resync("w-a")


def test_unknown_parent_drops_the_worker_then_accepts_the_next_batch():
    service = RouterService(BS)
    service.on_kv_batch(batch("w-a", 1, [stored([11, 12], PREFIX_A[:32])]))
    service.on_kv_batch(
        batch("w-a", 3, [stored([99], PREFIX_B[:16], parent=98)])
    )  # lost seq 2, unknown parent
    assert service.resyncs == 1
    assert service.index.stats().per_worker == {"w-a": 0}  # dropped: never a phantom
    assert not service.index.needs_resync("w-a")
    service.on_kv_batch(batch("w-a", 4, [stored([31, 32], PREFIX_B[:32])]))
    assert service.index.stats().per_worker == {"w-a": 2}
    assert service.decide(PREFIX_B, ["w-a", "w-b"]).worker == "w-a"


async def test_no_router_raises_router_unavailable_fast(nc, namespace):
    client = EndpointClient(nc, namespace, "router")
    with pytest.raises(RouterUnavailable) as info:
        await NatsRouterClient(client, timeout=2.0)([1, 2], ["w-a"])
    # NATS answered "no responders" at once: the client did not sit out its 2 s timeout
    assert isinstance(info.value.__cause__, NoRespondersError), repr(info.value.__cause__)
    await client.close()


async def test_a_rebuilding_router_is_unavailable_to_the_processor(nc, namespace):
    """``decide`` before the index is rebuilt: 503, which the processor's client turns into a fallback."""
    never = asyncio.Event()

    async def fetch_snapshot(worker):
        await never.wait()

    service = RouterService(BS, fetch_snapshot=fetch_snapshot)
    rebuild = asyncio.create_task(service.rebuild(["w-a"]))
    server = EndpointServer(nc, namespace, "router", "router-1")
    await server.serve(DECIDE_ENDPOINT, service.make_decide_handler())
    client = EndpointClient(nc, namespace, "router")
    try:
        with pytest.raises(RouterUnavailable, match="rebuilding"):
            await NatsRouterClient(client, timeout=2.0)([1, 2], ["w-a"])
    finally:
        rebuild.cancel()
        await client.close()
        await server.stop(drain_timeout=1)
