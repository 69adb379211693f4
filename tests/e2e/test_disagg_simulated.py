"""Disaggregated graphs of simulated workers through the launcher and the real planes: many
prefill and decode workers under load, and a prefill worker killed while requests are queued."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import nats
import pytest

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.event_plane import subscribe_load
from inference_graph.runtime.prefill_queue import PrefillQueue

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
        deadline = time.monotonic() + timeout
        while not predicate(self.latest):
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.latest}"
            await asyncio.sleep(0.1)

    def total(self, field: str) -> int:
        return sum(getattr(m, field) for m in self.latest.values())

    async def close(self) -> None:
        await self._nc.close()


async def queue_builds_up(url: str, namespace: str, timeout: float = 30.0) -> None:
    """Until requests wait in the graph's prefill queue (read from JetStream directly)."""
    nc = await nats.connect(url)
    try:
        queue = PrefillQueue(nc, namespace)
        deadline = time.monotonic() + timeout
        while await queue.depth() < 2:
            assert time.monotonic() < deadline, "the prefill queue never built up"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


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
    )
    watch = LoadWatch()
    await watch.start(infrastructure["NATS_SERVER"], name)
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    try:
        prefills = await discovery.list_instances(name, Role.PREFILL.value)
        assert len(prefills) == 2
        victim = next(iter(prefills.values()))
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
            requests = [asyncio.create_task(complete(http, 1500, i)) for i in range(16)]
            await queue_builds_up(infrastructure["NATS_SERVER"], name)
            os.kill(victim.pid, signal.SIGKILL)  # dies holding pulled requests, with more queued
            results = await asyncio.gather(*requests)
        assert len(results) == 16 and all(r["usage"]["completion_tokens"] == 8 for r in results)
        await watch.wait(
            lambda latest: sum(m.local_prefills + m.remote_prefills for m in latest.values()) == 16,
            "each request prefilled exactly once as the decode worker saw it",
        )
        assert watch.total("kv_transfer_failures") == 0
    finally:
        await discovery.close()
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
