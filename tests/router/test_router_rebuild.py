"""Rebuild and resync by snapshot, with an in-memory snapshot source; readiness; metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.errors import ServingError
from inference_graph.roles.router.service import RouterService
from inference_graph.runtime.event_plane import join_chunks, snapshot_chunks

pytestmark = pytest.mark.timeout(10)

BS = 16
PREFIX = list(range(1000, 1064))  # 4 blocks
ROUTER = hash_blocks(PREFIX, BS)


def stored(engine_hashes, tokens, parent=None) -> wire.BlockStored:
    return wire.BlockStored(
        block_hashes=engine_hashes, parent_block_hash=parent, token_ids=tokens, block_size=BS
    )


def batch(worker, seq, events) -> wire.KvEventBatch:
    return wire.KvEventBatch(instance_id=worker, seq=seq, timestamp=time.time(), events=events)


class Snapshots:
    """Answers ``fetch_snapshot`` once ``release`` is set; ``fail`` makes it raise."""

    def __init__(self, answers: dict[str, tuple[int, dict[int, int]]]) -> None:
        self.answers = answers
        self.release = asyncio.Event()
        self.asked: list[str] = []
        self.fail = False

    async def __call__(self, worker: str) -> tuple[int, dict[int, int]]:
        self.asked.append(worker)
        await self.release.wait()
        if self.fail:
            raise ConnectionError("worker gone")
        return self.answers[worker]


async def decide_frames(router: RouterService, tokens) -> wire.RouteDecision:
    handler = router.make_decide_handler()
    payload = wire.encoder.encode(wire.RouteRequest(tokens, ["w-a", "w-b"]))
    frames = [f async for f in handler(payload)]
    return wire.decoder(wire.RouteDecision).decode(frames[0])


async def test_decide_says_not_ready_until_the_snapshots_are_loaded_then_applies_held_batches():
    # w-a holds the first 2 blocks as of its batch 5; batch 6 (held during the fetch) adds 2 more.
    snaps = Snapshots({"w-a": (5, {11: ROUTER[0], 12: ROUTER[1]}), "w-b": (0, {})})
    router = RouterService(BS, seed=0, fetch_snapshot=snaps)
    rebuild = asyncio.create_task(router.rebuild(["w-a", "w-b"]))
    await asyncio.sleep(0)
    with pytest.raises(ServingError) as not_ready:
        await decide_frames(router, [*PREFIX, 7])
    assert (not_ready.value.status, not_ready.value.type) == (503, "service_unavailable_error")
    router.on_kv_batch(batch("w-a", 5, [stored([11, 12], PREFIX[:32])]))  # covered by the snapshot
    router.on_kv_batch(batch("w-a", 6, [stored([13, 14], PREFIX[32:], parent=12)]))
    snaps.release.set()
    await rebuild
    assert router.ready and router.snapshots == 2 and router.resyncs == 0
    assert router.index.router_hashes("w-a") == set(ROUTER)
    decision = await decide_frames(router, [*PREFIX, 7])
    assert (decision.worker, decision.overlap_blocks) == ("w-a", 4)


async def test_a_gap_fetches_a_snapshot_and_holds_batches_meanwhile():
    snaps = Snapshots({"w-a": (3, {11: ROUTER[0], 12: ROUTER[1], 13: ROUTER[2]})})
    router = RouterService(BS, fetch_snapshot=snaps)
    await router.rebuild([])
    router.on_kv_batch(batch("w-a", 1, [stored([11], PREFIX[:16])]))
    router.on_kv_batch(batch("w-a", 3, [stored([13], PREFIX[32:48], parent=12)]))  # seq 2 lost
    assert "w-a" in router._sync_tasks and router.resyncs == 1
    router.on_kv_batch(batch("w-a", 4, [stored([14], PREFIX[48:], parent=13)]))  # held
    assert router.index.router_hashes("w-a") == {ROUTER[0]}  # stale, never wrong, until loaded
    snaps.release.set()
    await asyncio.wait_for(asyncio.gather(*router._sync_tasks.values()), 5)
    assert router.index.router_hashes("w-a") == set(ROUTER)
    assert not router.index.needs_resync("w-a")


async def test_no_snapshot_falls_back_to_dropping_the_worker():
    snaps = Snapshots({})
    snaps.fail = True
    snaps.release.set()
    router = RouterService(BS, fetch_snapshot=snaps)
    router.on_kv_batch(batch("w-a", 1, [stored([11, 12], PREFIX[:32])]))
    router.on_kv_batch(batch("w-a", 3, [stored([31], PREFIX[:16])]))  # a gap; the root block applies
    await asyncio.wait_for(asyncio.gather(*router._sync_tasks.values()), 5)
    assert router.index.router_hashes("w-a") == {ROUTER[0]}
    assert router.index.stats().per_worker == {"w-a": 1}
    router.on_kv_batch(batch("w-a", 4, [stored([32], PREFIX[16:32], parent=31)]))
    assert router.index.stats().per_worker == {"w-a": 2}


async def test_a_worker_leaving_during_its_snapshot_stays_out():
    snaps = Snapshots({"w-a": (1, {11: ROUTER[0]})})
    router = RouterService(BS, fetch_snapshot=snaps)
    rebuild = asyncio.create_task(router.rebuild(["w-a"]))
    await asyncio.sleep(0)
    router.on_instance_event("removed", wire.InstanceInfo("w-a", "ns", "decode", "m"))
    snaps.release.set()
    await rebuild
    assert router.ready and len(router.index) == 0


def test_snapshot_chunks_round_trip_and_split():
    pairs = [(i, i * 7) for i in range(40000)]
    chunks = snapshot_chunks("w-a", 9, BS, pairs)
    assert len(chunks) == 3
    wire_chunks = [wire.decoder(type(c)).decode(wire.encoder.encode(c)) for c in chunks]
    assert join_chunks(wire_chunks) == (9, dict(pairs))
    assert join_chunks(snapshot_chunks("w-a", 0, BS, [])) == (0, {})


async def test_metrics_count_decisions_predicted_hits_events_and_index_size():
    router = RouterService(BS, seed=0)
    router.on_kv_batch(batch("w-a", 1, [stored([11, 12, 13, 14], PREFIX)]))
    router.on_kv_batch(batch("w-a", 2, [wire.BlockRemoved([14])]))
    router.decide([*PREFIX, 7], ["w-a", "w-b"])
    handler = router.make_metrics_handler()
    text = b"".join([f async for f in handler(b"")]).decode()
    for line in (
        "ig_router_decisions_total 1.0",
        "ig_router_prompt_tokens_total 65.0",
        "ig_router_predicted_hit_tokens_total 48.0",  # 3 blocks left on w-a
        "ig_router_kv_block_events_total 5.0",
        "ig_router_index_blocks 3.0",
        "ig_router_workers 1.0",
        "ig_router_decision_seconds_count 1.0",
        "ig_router_ready 1.0",
    ):
        assert line in text, line


def test_metrics_over_http_when_a_port_is_set():
    import httpx

    from inference_graph.roles.router.__main__ import serve_metrics_http
    from inference_graph.runtime.embedded import free_port
    from inference_graph.settings import ConfigError, Env, RuntimeSettings

    router = RouterService(BS)
    assert serve_metrics_http(router, RuntimeSettings.load({}).metrics_port) is None
    with pytest.raises(ConfigError, match=Env.IG_METRICS_PORT):
        RuntimeSettings.load({Env.IG_METRICS_PORT: "http"})
    port = free_port()
    server = serve_metrics_http(router, RuntimeSettings.load({Env.IG_METRICS_PORT: str(port)}).metrics_port)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200 and "ig_router_ready 1.0" in response.text
    finally:
        server.shutdown()
        server.server_close()


def test_snapshot_chunk_golden_bytes():
    """Encoded by position: a reorder of KvSnapshotChunk's fields fails here."""
    from inference_graph.runtime.event_plane import KvSnapshotChunk

    chunk = KvSnapshotChunk("w", 3, 64, [1, 2**64 - 1], [5, 6])
    assert wire.encoder.encode(chunk).hex() == "95a17703409201cfffffffffffffffff920506"
