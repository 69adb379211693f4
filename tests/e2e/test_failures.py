"""What happens when a client or a worker goes away mid-request, through the real processes and planes.

The workers run the simulated engine with its polynomial timing model: a decode
step takes ~6 ms of wall time and almost no CPU, so a 4000-token request lasts
~25 s however busy the machine is, and an abort is told apart from a natural
finish. (vLLM's own abort path, blocks freed included, is tested in
tests/engines/test_vllm_engine.py.)"""

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
from support import eventually

from .conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SLOW_WORKERS = [*TINY_OVERRIDES, "engine.type=mocker", "engine.mocker.timing=polynomial"]
LONG = {
    "model": "tiny",
    "prompt": "hello",
    "max_tokens": 4000,
    "stream": True,
    "ignore_eos": True,
    "temperature": 0,
}


async def watch_load(nats_url: str, namespace: str) -> tuple[nats.NATS, dict]:
    """Latest LoadMetrics per worker, kept current from the event plane."""
    nc = await nats.connect(nats_url)
    latest: dict = {}
    await subscribe_load(nc, namespace, lambda m: latest.__setitem__(m.instance_id, m))
    return nc, latest


async def test_client_disconnect_aborts_the_engine_request_and_frees_its_kv_blocks(
    start_graph, infrastructure
):
    graph = start_graph("disconnect", overrides=SLOW_WORKERS, env={"IG_LOAD_INTERVAL": "0.05"})
    nc, load = await watch_load(infrastructure["NATS_SERVER"], "disconnect")
    async with httpx.AsyncClient(base_url=graph.base_url, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json=LONG) as response:
            assert response.status_code == 200
            # Hold the iterator: a dropped one is finalized at once, and httpx then closes
            # the connection, disconnecting before this test means to.
            lines = response.aiter_lines()
            events = 0
            while events < 5:
                events += (await anext(lines)).startswith("data: ")
            await eventually(
                lambda: load,
                until=lambda latest: any(m.running == 1 and m.kv_usage > 0 for m in latest.values()),
                timeout=10,
                what="a running request",
            )
        # The client has gone. 4000 tokens take ~25 s here, so only an abort frees
        # the blocks within the deadline below.
        gone = time.time()
        await eventually(
            lambda: load,
            until=lambda latest: (
                latest
                and all(m.timestamp > gone and m.running == 0 and m.kv_usage == 0.0 for m in latest.values())
            ),
            timeout=5,
            what="the engine to abort the request and free its KV blocks",
        )
    await nc.close()


async def test_killed_worker_fails_its_request_and_leaves_routing(start_graph, infrastructure):
    """With migration off, the lost request ends with an error event, not a hang (with it on, it
    moves to the other worker: tests/e2e/test_migration.py)."""
    namespace = "worker-death"
    graph = start_graph(
        namespace,
        overrides=[*SLOW_WORKERS, "services.decode.replicas=2", "routing.migrationLimit=0"],
        env={"IG_LOAD_INTERVAL": "0.05"},
    )
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    workers = await discovery.watch_instances(namespace, Role.DECODE.value)
    await workers.wait_for(lambda instances: len(instances) == 2, 30)
    nc, load = await watch_load(infrastructure["NATS_SERVER"], namespace)

    async with httpx.AsyncClient(base_url=graph.base_url, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json=LONG) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            await eventually(
                lambda: load,
                until=lambda latest: any(m.running == 1 for m in latest.values()),
                timeout=10,
                what="the serving worker's load",
            )
            victim = next(i for i, m in load.items() if m.running == 1)
            os.kill(workers.instances[victim].pid, signal.SIGKILL)
            # Its lease has not expired yet, so routing still lists it; requests sent to it
            # now are refused before any token and go to the live worker instead.
            assert victim in workers.instances
            body = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
            responses = [await http.post("/v1/completions", json=body) for _ in range(4)]
            statuses = [r.status_code for r in responses]
            assert statuses == [200] * 4, [r.text for r in responses if r.status_code != 200]
            # The request it was serving must end with an error, not hang until the client's 60 s timeout.
            async with asyncio.timeout(20):
                rest = [line async for line in lines]
        assert any('"error"' in line for line in rest), rest[-3:]
        await workers.wait_for(lambda instances: victim not in instances, 15)
    await workers.close()
    await discovery.close()
    await nc.close()
