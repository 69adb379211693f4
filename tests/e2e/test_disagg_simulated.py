"""Disaggregated graphs of simulated workers through the launcher and the real planes: many
prefill and decode workers under load, and a prefill worker killed while requests are queued."""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import httpx
import nats
import pytest

from inference_graph import wire
from inference_graph.core.spec import Role
from inference_graph.roles.worker.remote_prefill import prefill_done_subject
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.event_plane import subscribe_load
from inference_graph.runtime.prefill_queue import CONSUMER, PrefillQueue
from support import eventually

from .conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SIMULATED = [*TINY_OVERRIDES, "engine.type=mocker", "engine.mocker.timing=polynomial"]


class LoadWatch:
    """The latest load metrics of every worker of a graph, from the event plane."""

    def __init__(self) -> None:
        self.latest = {}

    async def start(self, url: str, namespace: str) -> None:
        self._nc = await nats.connect(url)

        async def on_load(metrics):
            self.latest[metrics.instance_id] = metrics

        await subscribe_load(self._nc, namespace, on_load)

    async def wait(self, predicate, what: str, timeout: float = 30.0):
        await eventually(lambda: self.latest, until=predicate, timeout=timeout, interval=0.1, what=what)

    def total(self, field: str) -> int:
        return sum(getattr(m, field) for m in self.latest.values())

    async def close(self) -> None:
        await self._nc.close()


class QueueWatch:
    """The graph's prefill queue read from JetStream directly, and every prefill result a prefill
    worker sends to a decode worker (a passive subscriber beside the decode workers)."""

    async def start(self, url: str, namespace: str) -> None:
        self._nc = await nats.connect(url)
        self.queue = PrefillQueue(self._nc, namespace)
        self.results: list[wire.PrefillResult] = []
        decode = wire.decoder(wire.PrefillResult)

        async def on_result(msg) -> None:
            self.results.append(decode.decode(msg.data))

        every_decode_worker = prefill_done_subject(namespace, "any").rsplit(".", 1)[0] + ".*"
        await self._nc.subscribe(every_decode_worker, cb=on_result)
        await self._nc.flush()

    async def consumer(self):
        """The shared pull consumer: ``num_ack_pending`` (pulled, not yet acked), ``delivered``."""
        return await self._nc.jetstream().consumer_info(self.queue.stream, CONSUMER)

    async def close(self) -> None:
        await self._nc.close()


async def complete(http: httpx.AsyncClient, length: int, seed: int, max_tokens: int = 8) -> dict:
    prompt = [100 + (seed * 7 + i) % 1500 for i in range(length)]
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_4_prefill_2_decode_under_load_drain_the_queue(start_graph, infrastructure):
    graph = start_graph(
        "disagg-sim",
        config="configs/disagg.yaml",
        overrides=[
            *SIMULATED,
            "engine.mocker.speedup=5",
            "engine.mocker.instancesPerProcess=4",
            "services.decode.replicas=2",
            "services.prefill.replicas=4",
            "disaggregation.conditional.maxLocalPrefillLength=256",
            "disaggregation.conditional.maxPrefillQueueSize=64",
        ],
    )
    watch = LoadWatch()
    await watch.start(infrastructure["NATS_SERVER"], "disagg-sim")
    try:
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
            long = [complete(http, 1500, i) for i in range(40)]
            short = [complete(http, 100, 1000 + i) for i in range(8)]
            results = await asyncio.gather(*long, *short)
        assert all(r["usage"]["completion_tokens"] == 8 for r in results)
        await watch.wait(
            lambda latest: sum(m.local_prefills + m.remote_prefills for m in latest.values()) == 48,
            "every request counted by its decode worker",
        )
        assert watch.total("remote_prefills") >= 30  # long prompts went remote (unless the queue was full)
        assert watch.total("local_prefills") >= 8  # short ones stayed local
        assert watch.total("kv_transfer_failures") == 0
        await watch.wait(
            lambda latest: all(m.prefill_queue_depth == 0 for m in latest.values()), "an empty prefill queue"
        )
    finally:
        await watch.close()


async def test_killing_a_prefill_worker_loses_and_repeats_no_request(start_graph, infrastructure):
    name = "disagg-kill"
    graph = start_graph(
        name,
        config="configs/disagg.yaml",
        overrides=[
            *SIMULATED,
            "engine.mocker.speedup=0.5",  # prefills of 1500 tokens take ~0.2 s: requests queue up
            "services.prefill.replicas=2",
            "disaggregation.conditional.maxLocalPrefillLength=256",
            "disaggregation.conditional.maxPrefillQueueSize=64",
            "disaggregation.queue.ackWaitSeconds=2",
        ],
        env={"IG_LOAD_INTERVAL": "0.05"},
    )
    watch, queue = LoadWatch(), QueueWatch()
    await watch.start(infrastructure["NATS_SERVER"], name)
    await queue.start(infrastructure["NATS_SERVER"], name)
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    try:
        prefills = await discovery.list_instances(name, Role.PREFILL.value)
        assert len(prefills) == 2
        victim = next(iter(prefills.values()))
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
            requests = [asyncio.create_task(complete(http, 1500, i)) for i in range(16)]
            # Kill it while it prefills a request it pulled (acked only after its decode worker
            # took the KV) and more requests wait in the queue.
            await eventually(queue.queue.depth, until=lambda depth: depth >= 2, timeout=30, what="a queue")
            await watch.wait(
                lambda latest: victim.instance_id in latest and latest[victim.instance_id].running >= 1,
                "the victim prefilling a request it pulled",
            )
            held = await queue.consumer()
            os.kill(victim.pid, signal.SIGKILL)
            results = await asyncio.gather(*requests)
        assert held.num_ack_pending >= 1, "nothing was pulled and unacked when the worker was killed"
        # What it held was not lost: the queue delivered it again (after ackWait) to the other worker.
        # The consumer numbers every delivery, redeliveries included, and every message once.
        delivered = (await queue.consumer()).delivered
        assert delivered.consumer_seq > delivered.stream_seq, (
            f"no pulled request was redelivered: {delivered}"
        )

        assert len({r["id"] for r in results}) == 16
        assert all(r["usage"]["completion_tokens"] == 8 for r in results)
        await watch.wait(
            lambda latest: sum(m.local_prefills + m.remote_prefills for m in latest.values()) == 16,
            "every request counted by its decode worker",
        )
        # Per request, who sent its decode worker a prefill result. None: lost with the victim (and
        # prefilled locally after the remote timeout). More than one from a worker: prefilled twice.
        # The one duplicate allowed is the kill racing an ack: the victim reported, died before acking,
        # and the queue redelivered the request to the survivor (its decode worker ignores the second).
        survivor = next(i for i in prefills if i != victim.instance_id)
        senders = collections.defaultdict(list)
        for result in queue.results:
            assert result.error is None, result
            senders[result.request_id].append(result.prefill_instance_id)
        assert len(senders) == watch.total("remote_prefills") == 16, dict(senders)
        for request_id, sent_by in senders.items():
            assert sorted(sent_by) in (
                [victim.instance_id],
                [survivor],
                sorted([victim.instance_id, survivor]),
            ), (
                request_id,
                sent_by,
            )
        assert watch.total("kv_transfer_failures") == 0
    finally:
        await discovery.close()
        await queue.close()
        await watch.close()


async def test_with_the_kv_router_a_cached_prompt_is_prefilled_where_it_is_cached(
    start_graph, infrastructure
):
    name = "disagg-router-sim"
    graph = start_graph(
        name,
        config="configs/disagg_router.yaml",
        overrides=[
            *SIMULATED,
            "engine.mocker.speedup=5",
            "disaggregation.conditional.maxLocalPrefillLength=256",
        ],
    )
    watch = LoadWatch()
    await watch.start(infrastructure["NATS_SERVER"], name)
    try:
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
            await complete(http, 1500, seed=1)  # remote: nothing cached anywhere
            await watch.wait(lambda latest: watch.total("remote_prefills") == 1, "one remote prefill")
            # The router indexed the decode worker's KV events (published steps before the response
            # ended) and sends the same prompt back to it, whose own prefix cache leaves fewer than
            # 256 uncached tokens: prefilled locally, not queued.
            for _ in range(3):
                await complete(http, 1500, seed=1)
        await watch.wait(
            lambda latest: watch.total("remote_prefills") == 1 and watch.total("local_prefills") == 3,
            "the repeats prefilled locally on the worker holding the prefix",
        )
    finally:
        await watch.close()
