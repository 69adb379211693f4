"""KV-aware routing end to end: the router role with 4 simulated workers, and with 2 real vLLM
workers; requests sharing a prefix land on the worker that holds it."""

import os
import signal
from pathlib import Path

import httpx
import nats
import pytest

from inference_graph import wire
from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.request_plane import EndpointClient
from support import eventually

from .conftest import TINY_OVERRIDES
from .graph import descendants

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BLOCK = 32  # engine.blockSize default
PREFIX = [100 + (i * 7) % 800 for i in range(600)]  # ~600 tokens: 18 full blocks
PREFIX_BLOCK_TOKENS = len(PREFIX) // BLOCK * BLOCK


async def _router_knows_prefix(nc, namespace: str, workers: list[str]) -> bool:
    client = EndpointClient(nc, namespace, Role.ROUTER.value)
    try:
        payload = wire.encoder.encode(wire.RouteRequest([*PREFIX, 1], workers))
        frames = [f async for f in client.stream("decide", payload)]
        return wire.decoder(wire.RouteDecision).decode(frames[0]).expected_hit_tokens >= PREFIX_BLOCK_TOKENS
    finally:
        await client.close()


async def graph_complete(discovery, name: str, workers: int) -> bool:
    """The router registers once it listens, has rebuilt its index and serves."""
    routers = await discovery.list_instances(name, Role.ROUTER.value)
    return bool(routers) and len(await discovery.list_instances(name, Role.DECODE.value)) == workers


async def cached_tokens_of_shared_prefix_requests(
    graph, name: str, infrastructure, workers: int
) -> list[int]:
    """Warm one worker with the prefix, wait until the router knows, then send 8 requests sharing it."""
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    nc = await nats.connect(infrastructure["NATS_SERVER"])
    try:
        await eventually(lambda: graph_complete(discovery, name, workers), timeout=60, interval=0.05)
        ids = sorted(await discovery.list_instances(name, Role.DECODE.value))

        async with httpx.AsyncClient(base_url=graph.base_url, timeout=60) as http:

            async def complete(suffix: list[int]) -> int:
                body = {"model": "tiny", "prompt": PREFIX + suffix, "max_tokens": 4, "ignore_eos": True}
                response = await http.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text
                usage = response.json()["usage"]
                assert usage["prompt_tokens"] == len(PREFIX) + len(suffix)
                return usage["prompt_tokens_details"]["cached_tokens"]

            assert await complete([900, 901, 902]) == 0  # warms one worker
            await eventually(
                lambda: _router_knows_prefix(nc, name, ids), timeout=10, interval=0.05
            )  # events are asynchronous
            return [await complete([910 + i, 920 + i, 930 + i, 940 + i]) for i in range(8)]
    finally:
        await nc.close()
        await discovery.close()


async def test_shared_prefix_requests_land_on_the_worker_holding_it(start_graph, infrastructure):
    name = "kv-routing"
    graph = start_graph(
        name,
        overrides=[
            *TINY_OVERRIDES,
            "engine.type=mocker",
            "engine.mocker.timing=instant",
            "services.decode.replicas=4",
            "engine.mocker.instancesPerProcess=4",
            "routing.strategy=kv",
            "services.router.replicas=1",
        ],
    )
    cached = await cached_tokens_of_shared_prefix_requests(graph, name, infrastructure, 4)
    # Round-robin would hit on about 1 request in 4 (then on more as every worker warms up).
    assert all(c >= PREFIX_BLOCK_TOKENS for c in cached), cached
    assert "falls back" not in graph.log()
    await router_restart_rebuilds_before_registering(graph, name, infrastructure)


async def router_restart_rebuilds_before_registering(graph, name: str, infrastructure) -> None:
    """Kill the router; the launcher restarts it; once registered it already knows the prefix
    (it fetched the workers' snapshots: no event about the prefix is sent again)."""
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    nc = await nats.connect(infrastructure["NATS_SERVER"])
    try:
        old = set(await discovery.list_instances(name, Role.ROUTER.value))
        (pid,) = [p for p in descendants(graph.proc.pid) if "roles.router" in cmdline(p)]
        os.kill(pid, signal.SIGKILL)

        async def replaced() -> bool:
            return bool(set(await discovery.list_instances(name, Role.ROUTER.value)) - old)

        await eventually(replaced, timeout=30, interval=0.05)
        workers = sorted(await discovery.list_instances(name, Role.DECODE.value))
        assert await _router_knows_prefix(nc, name, workers)
    finally:
        await nc.close()
        await discovery.close()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.vllm
@pytest.mark.timeout(240)
async def test_two_vllm_workers_shared_prefix_lands_on_the_worker_holding_it(start_graph, infrastructure):
    """configs/agg_router.yaml as shipped (vLLM, prefix caching, kv routing), on the tiny model."""
    name = "kv-routing-vllm"
    graph = start_graph(name, config="configs/agg_router.yaml", overrides=[*TINY_OVERRIDES])
    cached = await cached_tokens_of_shared_prefix_requests(graph, name, infrastructure, 2)
    # vLLM reports the hit itself; round-robin would send every other request to the cold worker.
    assert all(c >= PREFIX_BLOCK_TOKENS for c in cached), cached
    assert "falls back" not in graph.log()
