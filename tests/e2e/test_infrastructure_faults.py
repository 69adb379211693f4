"""NATS and etcd restarted under a steady stream of requests (issue 15, item 3).

A graph (frontend -> processor -> decode worker, simulated engine) runs on its own nats-server and
etcd from ``runtime.embedded``, as external servers (``NATS_SERVER`` / ``ETCD_ENDPOINTS``). A steady
stream of streaming completions (``RATE`` a second, ``MAX_TOKENS`` tokens each) runs while the
server is SIGKILLed and started again on the same port with the same data (JetStream dir, etcd data
dir) ``OUTAGE`` seconds later, as a crashed server that its supervisor restarts would be; and the
launcher's own embedded nats-server is SIGKILLed, which the launcher starts again on its port.

Every request is counted: completed (a finish reason, no error event), failed (an HTTP error or an
error event), hung (no end within ``REQUEST_BOUND`` s, the client's own deadline). The promise
(docs/reliability.md): none hangs, and none fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from inference_graph.runtime.embedded import EmbeddedEtcd, EmbeddedNats, free_port

from .conftest import TINY_OVERRIDES
from .graph import LocalGraph, descendants

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SIMULATED = [*TINY_OVERRIDES, "engine.type=mocker", "engine.mocker.timing=polynomial"]
RATE = 10  # requests a second
REQUESTS = 60  # 6 s of requests
MAX_TOKENS = 300  # ~2 s a stream: several are mid-stream when the server dies
OUTAGE = 2.0  # seconds the server stays dead: the fault's length, not a wait for anything
REQUEST_BOUND = 40.0  # a request that has not ended by then is hung


async def one_request(http: httpx.AsyncClient, i: int) -> dict:
    """One streaming completion: its outcome and its longest pause between events."""
    body = {
        "model": "tiny",
        "prompt": [100 + (i * 7 + k) % 1500 for k in range(32)],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    run = {"outcome": "hung", "tokens": 0, "stall": 0.0, "error": None}
    last = time.monotonic()
    try:
        async with asyncio.timeout(REQUEST_BOUND):
            async with http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    run["outcome"], run["error"] = "failed", (await response.aread()).decode()[:300]
                    return run
                async for line in response.aiter_lines():
                    now = time.monotonic()
                    run["stall"], last = max(run["stall"], now - last), now
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        run["outcome"], run["error"] = "failed", event["error"]
                        return run
                    for choice in event["choices"]:
                        run["tokens"] += 1 if choice["text"] or choice.get("finish_reason") is None else 0
                        if choice.get("finish_reason"):
                            run["outcome"] = "completed"
    except TimeoutError:
        run["outcome"] = "hung"
    return run


async def steady_stream(http: httpx.AsyncClient, fault) -> list[dict]:
    """``REQUESTS`` requests at ``RATE`` a second; ``fault()`` runs once a tenth of them are under way."""
    tasks: list[asyncio.Task[dict]] = []
    fault_task = None
    for i in range(REQUESTS):
        tasks.append(asyncio.create_task(one_request(http, i)))
        if i == REQUESTS // 10:
            fault_task = asyncio.create_task(fault())
        await asyncio.sleep(1 / RATE)  # the load's pace
    assert fault_task is not None
    await fault_task
    return list(await asyncio.gather(*tasks))


def summary(name: str, runs: list[dict]) -> dict:
    counts = {k: sum(r["outcome"] == k for r in runs) for k in ("completed", "failed", "hung")}
    worst = max(r["stall"] for r in runs)
    print(
        f"{name}: {len(runs)} sent, {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['hung']} hung, worst stall {worst:.1f} s"
    )
    for r in runs:
        if r["outcome"] != "completed":
            print("  ", r["outcome"], r["tokens"], r["error"])
    return counts


def start(name: str, infrastructure: dict[str, str], tmp_path) -> LocalGraph:
    """The graph on the given servers; with none, on the launcher's own embedded ones."""
    graph = LocalGraph(
        "configs/agg.yaml",
        free_port(),
        [f"metadata.name={name}", *SIMULATED],
        {**infrastructure, "IG_LEASE_TTL": "3"},
        tmp_path / f"{name}.log",
    )
    graph.wait_ready()
    return graph


@pytest.fixture
def servers():
    with EmbeddedNats() as nats_server, EmbeddedEtcd() as etcd:
        yield nats_server, etcd


def kill_and_restart(server):
    async def fault() -> None:
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.sleep(OUTAGE)  # the outage itself
        await asyncio.to_thread(server.restart)  # same port, same data

    return fault


def kill_embedded_nats(graph: LocalGraph):
    """SIGKILL the launcher's embedded nats-server; the launcher starts it again (keep_running)."""
    (pid,) = [
        p for p in descendants(graph.proc.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "nats-server"
    ]

    async def fault() -> None:
        os.kill(pid, signal.SIGKILL)

    return fault


def lost_after_first_output_on_the_processor_hop(run: dict) -> bool:
    error = run["error"]
    return (
        isinstance(error, dict)
        and run["tokens"] > 0
        and error["type"] == "service_unavailable_error"
        and ".processor.process " in error["message"]
        and error["message"].endswith("were lost in transport")
    )


@pytest.mark.parametrize("which", ["nats", "etcd", "embedded-nats"])
async def test_server_sigkilled_and_restarted_under_load_hangs_no_request_and_fails_none_but_the_known_loss(
    servers, tmp_path, which
):
    nats_server, etcd = servers
    external = {"NATS_SERVER": nats_server.url, "ETCD_ENDPOINTS": etcd.endpoint}
    graph = start(f"{which}-restart", {} if which == "embedded-nats" else external, tmp_path)
    faults = {
        "nats": lambda: kill_and_restart(nats_server),
        "etcd": lambda: kill_and_restart(etcd),
        "embedded-nats": lambda: kill_embedded_nats(graph),
    }
    try:
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=REQUEST_BOUND + 5) as http:
            runs = await steady_stream(http, faults[which]())
    finally:
        graph.stop()
    counts = summary(f"{which} restart", runs)
    assert counts["hung"] == 0  # every request ended within REQUEST_BOUND
    # The one loss not covered yet (docs/reliability.md, "What is not promised"): frames of the
    # frontend <- processor hop lost after the client's first output end the request with a
    # retryable error. Seen only with the launcher's embedded NATS, which is back within ~1 s, in 1
    # of 3 runs under load. Any other failure fails the test.
    failed = [r for r in runs if r["outcome"] == "failed"]
    other = [r["error"] for r in failed if not lost_after_first_output_on_the_processor_hop(r)]
    assert not other, other
