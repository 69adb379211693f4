"""The block-hash contract against a real vLLM engine, and the mocker beside it.

A router never sees an engine's own hashes as keys: it recomputes
``core.block_hash`` hashes from each BlockStored event's tokens, chaining
through ``parent_block_hash``. Each engine's events are fed to the real router
service, which must then find exactly the prompt's full blocks (hand-counted),
and both engines must report that same cache hit.
"""

from __future__ import annotations

import asyncio

import pytest

from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.core.spec import EngineSpec, MockerSpec
from inference_graph.engines.mocker import MockerEngine
from inference_graph.engines.vllm_engine import VllmEngine
from inference_graph.roles.router.service import RouterService
from support import eventually

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(180)]

BLOCK = 32


WORKER = "w"


class RouterFeed:
    """An engine's KV events, fed to the real router service as its worker's batches."""

    def __init__(self, events) -> None:
        self.events = events
        self.router = RouterService(BLOCK, seed=0)
        self.engine_hashes: list[int] = []  # the engine's own block hashes, in event order
        self.seq = 0

    async def overlap_after_next_batch(self, prompt: list[int]) -> int:
        batch = await asyncio.wait_for(anext(self.events), 20)
        self.engine_hashes += [h for e in batch if isinstance(e, wire.BlockStored) for h in e.block_hashes]
        self.seq += 1
        self.router.on_kv_batch(
            wire.KvEventBatch(instance_id=WORKER, seq=self.seq, timestamp=0.0, events=batch)
        )
        return self.router.decide(prompt, [WORKER]).overlap_blocks

    async def until_indexed(self, prompt: list[int], blocks: int) -> None:
        await eventually(
            lambda: self.overlap_after_next_batch(prompt),
            until=lambda n: n >= blocks,
            timeout=20,
            interval=0,
            what=f"the router to index {blocks} blocks of the prompt",
        )


async def generate(engine, request_id: str, prompt: list[int]) -> list[wire.GenerateOutput]:
    sampling = wire.SamplingOptions(max_tokens=4, temperature=0.0, ignore_eos=True)
    return [f async for f in engine.generate(wire.GenerateRequest(request_id, prompt, sampling))]


PROMPT = [(7 * i + 11) % 2000 + 10 for i in range(203)]  # 203 tokens: 6 full blocks of 32 and 11 tokens
# The same first 2 blocks, then a different token in block 3: a router may only count 2 blocks.
DIVERGING = [*PROMPT[: 2 * BLOCK + 5], 1, *PROMPT[2 * BLOCK + 6 :]]


def check_router_view(feed: RouterFeed) -> None:
    """What the router learnt from the engine's events, against hand-counted blocks."""
    decision = feed.router.decide(PROMPT, [WORKER])
    assert (decision.worker, decision.overlap_blocks, decision.expected_hit_tokens) == (WORKER, 6, 6 * BLOCK)
    assert feed.router.decide(DIVERGING, [WORKER]).overlap_blocks == 2
    assert feed.router.decide(PROMPT[:100], [WORKER]).overlap_blocks == 3  # 100 tokens: 3 full blocks


async def test_router_hashes_agree_with_vllm_and_the_mocker(tiny_model_path):
    vllm = VllmEngine(tiny_model_path, block_size=BLOCK, max_model_len=512, kv_cache_gib=0.25, max_num_seqs=4)
    await vllm.start()
    try:
        feed = RouterFeed(vllm.kv_events())
        first = await generate(vllm, "v1", PROMPT)
        await feed.until_indexed(PROMPT, 6)
        check_router_view(feed)
        # vLLM's own hashes are not the router's: the router recomputed them from the events' tokens
        assert not set(feed.engine_hashes) & set(hash_blocks(PROMPT, BLOCK))
        second = await generate(vllm, "v2", PROMPT)
        vllm_hits = (first[0].num_cached_tokens, second[0].num_cached_tokens)
        await feed.events.aclose()
    finally:
        await vllm.shutdown()

    spec = EngineSpec(type="mocker", block_size=BLOCK, max_model_len=512, mocker=MockerSpec(timing="instant"))
    mocker = MockerEngine(spec, tiny_model_path)
    await mocker.start()
    try:
        feed = RouterFeed(mocker.kv_events())
        first = await generate(mocker, "m1", PROMPT)
        await feed.until_indexed(PROMPT, 6)
        check_router_view(feed)
        assert feed.engine_hashes[:6] == hash_blocks(PROMPT, BLOCK)  # the mocker publishes router hashes
        second = await generate(mocker, "m2", PROMPT)
        # both engines, like the router, count the 6 full blocks as the second request's hit
        assert (first[0].num_cached_tokens, second[0].num_cached_tokens) == vllm_hits == (0, 6 * BLOCK)
    finally:
        await mocker.shutdown()
