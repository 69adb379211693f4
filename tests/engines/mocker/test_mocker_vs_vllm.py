"""The block-hash contract against a real vLLM engine, and the mocker beside it.

A router never sees an engine's own hashes as keys: it recomputes
``core.block_hash`` hashes from each BlockStored event's tokens, chaining
through ``parent_block_hash`` with a per-worker engine-hash -> router-hash map.
For the same prompt, vLLM's events and the mocker's must yield exactly
``hash_blocks(prompt)``, and both engines must report the same cache hit.
"""

from __future__ import annotations

import asyncio

import pytest

from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.core.spec import EngineSpec, MockerSpec
from inference_graph.engines.mocker import MockerEngine
from inference_graph.engines.vllm_engine import VllmEngine

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(180)]

BLOCK = 32


class RouterView:
    """What a router keeps per worker: engine hash -> router hash."""

    def __init__(self) -> None:
        self.to_router: dict[int, int] = {}
        self.stored: list[int] = []  # router hashes in event order

    def apply(self, event: wire.BlockStored) -> None:
        parent = None if event.parent_block_hash is None else self.to_router[event.parent_block_hash]
        ours = hash_blocks(event.token_ids, event.block_size, parent)
        assert len(ours) == len(event.block_hashes)
        self.to_router.update(zip(event.block_hashes, ours, strict=True))
        self.stored.extend(ours)


async def stored_until(engine, events, view: RouterView, count: int) -> None:
    while len(view.stored) < count:
        for event in await asyncio.wait_for(anext(events), 20):
            if isinstance(event, wire.BlockStored):
                view.apply(event)


async def generate(engine, request_id: str, prompt: list[int]) -> list[wire.GenerateOutput]:
    sampling = wire.SamplingOptions(max_tokens=4, temperature=0.0, ignore_eos=True)
    return [f async for f in engine.generate(wire.GenerateRequest(request_id, prompt, sampling))]


async def test_router_hashes_agree_with_vllm_and_the_mocker(tiny_model_path):
    prompt = [(7 * i + 11) % 2000 + 10 for i in range(203)]  # 6 full blocks and 11 tokens
    expected = hash_blocks(prompt, BLOCK)
    assert len(expected) == 6

    vllm = VllmEngine(tiny_model_path, block_size=BLOCK, max_model_len=512, kv_cache_gib=0.25, max_num_seqs=4)
    await vllm.start()
    try:
        events = vllm.kv_events()
        view = RouterView()
        first = await generate(vllm, "v1", prompt)
        await stored_until(vllm, events, view, len(expected))
        assert view.stored[: len(expected)] == expected
        assert any(h not in expected for h in view.to_router)  # vLLM's own hashes differ from ours
        second = await generate(vllm, "v2", prompt)
        vllm_hits = (first[0].num_cached_tokens, second[0].num_cached_tokens)
        await events.aclose()
    finally:
        await vllm.shutdown()

    spec = EngineSpec(type="mocker", block_size=BLOCK, max_model_len=512, mocker=MockerSpec(timing="instant"))
    mocker = MockerEngine(spec, tiny_model_path)
    await mocker.start()
    try:
        events = mocker.kv_events()
        view = RouterView()
        first = await generate(mocker, "m1", prompt)
        await stored_until(mocker, events, view, len(expected))
        assert view.stored[: len(expected)] == expected
        assert all(view.to_router[h] == h for h in view.to_router)  # the mocker publishes router hashes
        second = await generate(mocker, "m2", prompt)
        assert (first[0].num_cached_tokens, second[0].num_cached_tokens) == vllm_hits == (0, 6 * BLOCK)
    finally:
        await mocker.shutdown()
