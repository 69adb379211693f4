"""KV events and load metrics over a real nats-server."""

from __future__ import annotations

import asyncio
import itertools

from inference_graph import wire
from inference_graph.runtime.event_plane import EventPublisher, subscribe_kv, subscribe_load


async def test_kv_batches_arrive_in_order_with_increasing_seq(nc, namespace):
    received: list[wire.KvEventBatch] = []
    done = asyncio.Event()
    n = 200

    def on_batch(batch: wire.KvEventBatch) -> None:
        received.append(batch)
        if len(received) == 2 * n:
            done.set()

    sub = await subscribe_kv(nc, namespace, on_batch)
    pubs = [EventPublisher(nc, namespace, iid) for iid in ("w1", "w2")]
    for i in range(n):
        for pub in pubs:
            await pub.publish_kv(
                [
                    wire.BlockStored([i], i - 1 if i else None, list(range(32)), 32),
                    wire.BlockRemoved([i + 1000]),
                ]
            )
    await asyncio.wait_for(done.wait(), 5)
    for iid in ("w1", "w2"):
        mine = [b for b in received if b.instance_id == iid]
        assert [b.seq for b in mine] == list(range(1, n + 1))
        assert [b.events[0].block_hashes for b in mine] == [[i] for i in range(n)]
        assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(mine))
    assert isinstance(received[0].events[1], wire.BlockRemoved)
    await sub.unsubscribe()


async def test_load_metrics_and_per_instance_filter(nc, namespace):
    got: asyncio.Queue[wire.LoadMetrics] = asyncio.Queue()

    async def on_load(metrics: wire.LoadMetrics) -> None:  # async callbacks work too
        await got.put(metrics)

    sub = await subscribe_load(nc, namespace, on_load, instance_id="w2")
    for iid in ("w1", "w2"):
        await EventPublisher(nc, namespace, iid).publish_load(wire.LoadMetrics(iid, 1.0, 3, 1, 0.5, 100))
    metrics = await asyncio.wait_for(got.get(), 2)
    assert metrics == wire.LoadMetrics("w2", 1.0, 3, 1, 0.5, 100)
    await nc.flush()
    assert got.empty()  # w1's metrics went elsewhere
    await sub.unsubscribe()
