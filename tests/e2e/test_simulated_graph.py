"""A graph of 32 simulated workers on this 2-core machine, through the real planes."""

import httpx
import pytest

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery

from .conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_32_simulated_workers_register_and_serve(start_graph, infrastructure):
    graph = start_graph(
        "simulated",
        overrides=[
            *TINY_OVERRIDES,
            "engine.type=mocker",
            "engine.mocker.timing=instant",
            "services.decode.replicas=32",
            "engine.mocker.instancesPerProcess=16",
        ],
    )
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    workers = await discovery.list_instances("simulated", Role.DECODE.value)
    assert len(workers) == 32
    assert len({w.pid for w in workers.values()}) == 2  # 16 engines per process
    async with httpx.AsyncClient(base_url=graph.base_url, timeout=30) as http:
        for _ in range(40):  # round-robin visits every worker
            body = {"model": "tiny", "prompt": "hello world", "max_tokens": 8, "ignore_eos": True}
            response = await http.post("/v1/completions", json=body)
            assert response.status_code == 200
            assert response.json()["usage"]["completion_tokens"] == 8
    await discovery.close()
