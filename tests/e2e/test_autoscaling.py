"""Autoscaling on one machine: the planner role decides, the launcher starts and stops workers.

Simulated decode workers with a small KV cache (64 blocks) and real-time steps:
concurrent requests fill the cache and queue, the planner (load policy, 1 s
interval) scales decode to two processes; under a light load it scales back to
one (the leaving worker drains), and every request completes.
"""

import asyncio

import httpx
import pytest

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery

from .conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

AUTOSCALING = [
    "engine.type=mocker",
    "engine.mocker.timing=polynomial",
    "engine.mocker.numKvBlocks=64",
    "engine.maxModelLen=1024",
    "planner.policy=load",
    "planner.intervalSeconds=1",
    "services.decode.autoscaling.enabled=true",
    "services.decode.autoscaling.maxReplicas=2",
    "services.decode.autoscaling.targets.kvUsage=0.3",
    "services.decode.autoscaling.scaleDownStabilizationSeconds=3",
]


async def test_planner_scales_decode_up_under_load_and_back_down(start_graph, infrastructure):
    graph = start_graph("autoscale", overrides=[*TINY_OVERRIDES, *AUTOSCALING])
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    workers = await discovery.watch_instances("autoscale", Role.DECODE.value)
    assert len(workers.instances) == 1
    phase = {"clients": 10}  # clients still sending; lowered to 1 once decode scaled up
    statuses: list[int] = []

    async def client(http: httpx.AsyncClient, number: int) -> None:
        body = {
            "model": "tiny",
            "prompt": "the capital of France is " * 40,
            "max_tokens": 150,
            "ignore_eos": True,
        }
        while number < phase["clients"]:
            response = await http.post("/v1/completions", json=body)
            statuses.append(response.status_code)

    async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
        load = [asyncio.create_task(client(http, n)) for n in range(10)]
        await workers.wait_for(lambda instances: len(instances) == 2, timeout=90)
        # Light load: the planner scales back to one worker while one client keeps sending;
        # the worker that leaves drains, so none of its requests fails.
        phase["clients"] = 1
        await workers.wait_for(lambda instances: len(instances) == 1, timeout=90)
        phase["clients"] = 0
        await asyncio.gather(*load)
    assert len(statuses) > 10 and all(status == 200 for status in statuses)
    assert (await discovery.get_replicas("autoscale")) == {"decode": 1}
    log = graph.log()
    assert "planner: decode -> 2 replicas" in log and "planner: decode -> 1 replicas" in log
    await workers.close()
    await discovery.close()
