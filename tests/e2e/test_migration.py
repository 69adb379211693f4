"""Mid-stream migration through the real processes: SIGKILL a decode worker serving streams, and
every stream goes on on the other worker with exactly the tokens of an uninterrupted run.

The simulated engine's greedy tokens depend on the context only (docs/simulated-engine.md), so
the same requests sent again afterwards, uninterrupted, are the reference. Each stream asks for
per-token logprobs, so its tokens are compared one by one (no gap, no duplicate), not just its
text. The killed worker's streams wait for its lease to expire (IG_LEASE_TTL 3 s here), then
move; the launcher restarts the worker meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery
from support import eventually

from .conftest import TINY_OVERRIDES
from .test_failures import watch_load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SIMULATED = [*TINY_OVERRIDES, "engine.type=mocker", "engine.mocker.timing=polynomial"]
STREAMS = 16
MAX_TOKENS = 1000  # ~6 ms a step: a stream lasts several seconds, so the kill lands mid-stream
GRAPHS = {
    "agg-kv": ("configs/agg_router.yaml", []),  # the KV router routes the migrated requests again
    # round-robin, processing hosted by the frontend
    "agg-embedded": ("configs/agg.yaml", ["services.decode.replicas=2", "services.processor.replicas=0"]),
    # long continuations are prefilled remotely (longer than maxLocalPrefillLength 32)
    "disagg": ("configs/disagg.yaml", ["services.decode.replicas=2"]),
}


def prompt(i: int) -> list[int]:
    return [100 + (i * 7 + k) % 1500 for k in range(48)]


def greedy(i: int, max_tokens: int = MAX_TOKENS) -> dict:
    """A greedy streaming completion that asks for each token (logprobs) and the usage."""
    return {
        "model": "tiny",
        "prompt": prompt(i),
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "logprobs": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_completion(http: httpx.AsyncClient, body: dict, on_event=None) -> dict:
    """Stream ``body``; its tokens, text, finish reason, usage and error events.

    ``on_event(n)`` is awaited after the n-th event with content (mid-stream hooks)."""
    run = {"tokens": [], "text": "", "finish": None, "usage": None, "errors": []}
    events = 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                run["errors"].append(event["error"])
                continue
            run["usage"] = event.get("usage") or run["usage"]
            for choice in event["choices"]:
                run["text"] += choice["text"]
                run["finish"] = choice.get("finish_reason") or run["finish"]
                run["tokens"] += (choice.get("logprobs") or {}).get("tokens", [])
            if event["choices"] and on_event is not None:
                events += 1
                await on_event(events)
    return run


def migrations_total(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ig_frontend_migrations_total{")
    )


@pytest.mark.parametrize("name", GRAPHS)
async def test_sigkill_of_a_decode_worker_mid_stream_loses_no_request_and_no_token(
    start_graph, infrastructure, name
):
    config, extra = GRAPHS[name]
    namespace = f"migrate-{name}"
    graph = start_graph(
        namespace, config=config, overrides=[*SIMULATED, *extra], env={"IG_LOAD_INTERVAL": "0.05"}
    )
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    workers = await discovery.watch_instances(namespace, Role.DECODE.value)
    await workers.wait_for(lambda instances: len(instances) == 2, 30)
    nc, load = await watch_load(infrastructure["NATS_SERVER"], namespace)
    try:
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
            started = [asyncio.Event() for _ in range(STREAMS)]

            def on_event(i):
                async def first_event(_n):
                    started[i].set()

                return first_event

            runs = [
                asyncio.create_task(stream_completion(http, greedy(i), on_event(i))) for i in range(STREAMS)
            ]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 60)

            def decode_load():
                return [m for i, m in load.items() if i in workers.instances]

            reports = await eventually(
                decode_load,
                until=lambda reports: sum(m.running for m in reports) == STREAMS,
                timeout=10,
                what="the decode workers' load reports to count every stream",
            )
            busiest = max(reports, key=lambda m: m.running)
            victim, victim_streams = busiest.instance_id, busiest.running
            assert victim_streams > 0
            os.kill(workers.instances[victim].pid, signal.SIGKILL)
            interrupted = await asyncio.gather(*runs)

            # the same requests again, nothing killed: the reference
            reference = await asyncio.gather(*(stream_completion(http, greedy(i)) for i in range(STREAMS)))
            metrics = (await http.get("/metrics")).text
    finally:
        await workers.close()
        await discovery.close()
        await nc.close()

    failed = [i for i, run in enumerate(interrupted) if run["errors"]]
    assert failed == [], [interrupted[i]["errors"] for i in failed]
    for i, (run, ref) in enumerate(zip(interrupted, reference, strict=True)):
        assert not ref["errors"]
        assert len(run["tokens"]) == len(ref["tokens"]) == MAX_TOKENS, i
        assert run["tokens"] == ref["tokens"], f"stream {i} differs from the uninterrupted run"
        assert run["text"] == ref["text"]
        # the original prompt, and every token the client got (cached tokens differ: the reference hits the cache)
        assert run["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"] == len(prompt(i))
        assert run["usage"]["completion_tokens"] == MAX_TOKENS
        assert run["usage"]["total_tokens"] == len(prompt(i)) + MAX_TOKENS
    assert migrations_total(metrics) == victim_streams
    assert graph.log().count("migrating request") == victim_streams
    print(f"{name}: {STREAMS} streams sent, {STREAMS - len(failed)} completed, {victim_streams} migrated")


@pytest.mark.vllm
async def test_vllm_decode_worker_killed_mid_stream_gives_the_uninterrupted_greedy_text(
    start_graph, infrastructure
):
    """Real engines: a greedy stream whose vLLM decode worker is SIGKILLed goes on on the other
    worker (prefilling the prompt plus the tokens already streamed) and ends with the same text."""
    namespace = "migrate-vllm"
    graph = start_graph(
        namespace,
        overrides=[*TINY_OVERRIDES, "services.decode.replicas=2"],
        env={"IG_LOAD_INTERVAL": "0.05"},
    )
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    workers = await discovery.watch_instances(namespace, Role.DECODE.value)
    await workers.wait_for(lambda instances: len(instances) == 2, 120)
    nc, load = await watch_load(infrastructure["NATS_SERVER"], namespace)
    body = greedy(0, max_tokens=2000)

    async def kill_the_serving_worker(n: int) -> None:
        if n != 10:  # mid-stream
            return
        serving = await eventually(
            lambda: [i for i, m in load.items() if i in workers.instances and m.running],
            timeout=10,
            what="the serving decode worker's load report",
        )
        assert len(serving) == 1
        os.kill(workers.instances[serving[0]].pid, signal.SIGKILL)

    try:
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=300) as http:
            uninterrupted = {k: v for k, v in body.items() if k != "stream_options"} | {"stream": False}
            reference = await http.post("/v1/completions", json=uninterrupted)
            assert reference.status_code == 200, reference.text
            expected = reference.json()["choices"][0]
            run = await stream_completion(http, body, kill_the_serving_worker)
            metrics = (await http.get("/metrics")).text
    finally:
        await workers.close()
        await discovery.close()
        await nc.close()
    assert run["errors"] == [] and run["finish"] == "length"
    assert run["text"] == expected["text"]
    assert run["tokens"] == expected["logprobs"]["tokens"]
    assert run["usage"]["completion_tokens"] == 2000
    assert migrations_total(metrics) == 1
