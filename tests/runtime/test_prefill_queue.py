"""The prefill queue on a real nats-server with JetStream: work-queue semantics, redelivery,
in-progress acks, max-deliver, depth, and a queue that outlives its consumers and the server."""

import asyncio
import time

import nats
import pytest

from inference_graph import wire
from inference_graph.runtime.embedded import EmbeddedNats
from inference_graph.runtime.prefill_queue import JetStreamUnavailable, PrefillQueue, QueueSettings


def request(i: int) -> wire.PrefillRequest:
    return wire.PrefillRequest(
        request_id=f"r{i}",
        token_ids=[1, 2, 3],
        sampling=wire.SamplingOptions(max_tokens=4),
        decode_instance_id="d1",
        deadline=time.time() + 60,
    )


async def queue_on(url: str, namespace: str, settings: QueueSettings | None = None) -> PrefillQueue:
    nc = await nats.connect(url)
    queue = PrefillQueue(nc, namespace, settings)
    await queue.ensure()
    return queue


async def close(queue: PrefillQueue) -> None:
    await queue.close()
    await queue._nc.close()


async def depth_now(queue: PrefillQueue) -> int:
    queue._depth = None  # no cached value: these tests check each change at once
    return await queue.depth()


async def test_acked_request_leaves_the_queue(nats_server, namespace):
    queue = await queue_on(nats_server.url, namespace)
    try:
        await queue.enqueue(request(1))
        await queue.enqueue(request(2))
        assert await depth_now(queue) == 2
        delivery = await queue.pull(timeout=2)
        assert delivery.request.request_id == "r1"
        assert delivery.num_delivered == 1
        assert await depth_now(queue) == 1  # pulled: no longer waiting, though not acked yet
        await delivery.ack()
        second = await queue.pull(timeout=2)
        await second.ack()
        assert await queue.pull(timeout=0.3) is None
        info = await queue._js.stream_info(queue.stream)
        assert info.state.messages == 0  # work-queue retention: acked messages are deleted
    finally:
        await close(queue)


async def test_unacked_request_goes_to_another_worker_after_ack_wait(nats_server, namespace):
    settings = QueueSettings(ack_wait=1.0, max_deliver=3)
    first = await queue_on(nats_server.url, namespace, settings)
    second = await queue_on(nats_server.url, namespace, settings)
    try:
        await first.enqueue(request(1))
        taken = await first.pull(timeout=2)
        assert taken is not None
        await close(first)  # the worker dies holding it
        again = await second.pull(timeout=5)
        assert again.request.request_id == "r1"
        assert again.num_delivered == 2
        await again.ack()
    finally:
        await close(second)


async def test_in_progress_acks_keep_a_long_prefill_from_redelivery(nats_server, namespace):
    settings = QueueSettings(ack_wait=1.0, max_deliver=3)
    worker = await queue_on(nats_server.url, namespace, settings)
    other = await queue_on(nats_server.url, namespace, settings)
    try:
        await worker.enqueue(request(1))
        delivery = await worker.pull(timeout=2)
        async with delivery.keep_alive():
            # three ack-waits pass while the "prefill" runs: nobody else gets the request
            assert await other.pull(timeout=3.0) is None
        await delivery.ack()
        assert await other.pull(timeout=1.5) is None
    finally:
        await close(worker)
        await close(other)


async def test_a_request_is_delivered_at_most_max_deliver_times(nats_server, namespace):
    queue = await queue_on(nats_server.url, namespace, QueueSettings(ack_wait=1.0, max_deliver=2))
    try:
        await queue.enqueue(request(1))
        for expected in (1, 2):
            delivery = await queue.pull(timeout=5)
            assert delivery.num_delivered == expected
            await delivery.give_back()
        assert await queue.pull(timeout=2.5) is None
    finally:
        await close(queue)


async def test_queue_keeps_its_messages_across_consumer_restart(nats_server, namespace):
    producer = await queue_on(nats_server.url, namespace)
    for i in range(3):
        await producer.enqueue(request(i))
    consumer = await queue_on(nats_server.url, namespace)
    await consumer.pull(timeout=2)  # one taken, then the consumer side restarts
    await close(consumer)
    restarted = await queue_on(nats_server.url, namespace, QueueSettings(ack_wait=1.0))
    try:
        seen = set()
        while len(seen) < 3:
            delivery = await restarted.pull(timeout=15)
            assert delivery is not None, f"lost requests; got {sorted(seen)}"
            seen.add(delivery.request.request_id)
            await delivery.ack()
        assert seen == {"r0", "r1", "r2"}
    finally:
        await close(restarted)
        await close(producer)


@pytest.mark.timeout(60)
async def test_queue_survives_a_nats_server_restart(namespace):
    with EmbeddedNats() as server:
        queue = await queue_on(server.url, namespace)
        await queue.enqueue(request(7))
        await close(queue)
        await asyncio.to_thread(server.restart)
        queue = await queue_on(server.url, namespace)
        try:
            delivery = await queue.pull(timeout=5)
            assert delivery.request.request_id == "r7"
            await delivery.ack()
        finally:
            await close(queue)


async def test_a_nats_server_without_jetstream_is_a_clear_error(namespace):
    with EmbeddedNats(jetstream=False) as server:
        nc = await nats.connect(server.url)
        try:
            with pytest.raises(JetStreamUnavailable, match="needs JetStream"):
                await PrefillQueue(nc, namespace).ensure()
        finally:
            await nc.close()
