"""VllmEngine against a real vLLM (CPU) with the tiny random Llama.

One engine serves the whole module (starting one takes ~12 s). Prompts use
distinct token ranges so the prefix cache of one test does not leak into
another's expectations.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest
import pytest_asyncio

from inference_graph import wire
from inference_graph.engines.vllm_engine import VllmEngine
from inference_graph.errors import ServingError
from support import eventually

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

BLOCK = 32
MAX_MODEL_LEN = 512


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_path):
    eng = VllmEngine(
        tiny_model_path, block_size=BLOCK, max_model_len=MAX_MODEL_LEN, kv_cache_gib=0.25, max_num_seqs=16
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    await eng.start()
    # The processes this engine started (other tests' processes may share our parent).
    eng.test_children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    yield eng
    await eng.shutdown()


def greedy(max_tokens: int, **kwargs) -> wire.SamplingOptions:
    return wire.SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kwargs)


async def run(engine: VllmEngine, request_id: str, prompt: list[int], sampling: wire.SamplingOptions):
    frames = [frame async for frame in engine.generate(wire.GenerateRequest(request_id, prompt, sampling))]
    tokens = [t for frame in frames for t in frame.token_ids]
    return frames, tokens


async def test_info_after_start(engine):
    assert engine.info.block_size == BLOCK
    assert engine.info.max_model_len == MAX_MODEL_LEN
    # 0.25 GiB of KV cache for a 2-layer model: thousands of blocks.
    assert engine.info.num_kv_blocks > 1000


async def test_greedy_is_deterministic_and_counts_tokens(engine):
    prompt = list(range(100, 140))
    frames_a, tokens_a = await run(engine, "greedy-a", prompt, greedy(12))
    _frames_b, tokens_b = await run(engine, "greedy-b", prompt, greedy(12))
    assert len(tokens_a) == 12
    assert tokens_a == tokens_b
    assert frames_a[-1].finish_reason == "length"
    assert all(f.finish_reason is None for f in frames_a[:-1])
    assert frames_a[0].num_prompt_tokens == len(prompt)
    assert frames_a[-1].stop_token_id is None


async def test_prefix_cache_hit_is_reported(engine):
    prompt = list(range(200, 200 + 5 * BLOCK + 7))
    first, _ = await run(engine, "cache-a", prompt, greedy(2))
    second, _ = await run(engine, "cache-b", prompt, greedy(2))
    assert first[0].num_cached_tokens == 0
    assert second[0].num_cached_tokens >= 5 * BLOCK - BLOCK  # all full blocks but maybe the last
    assert second[0].num_cached_tokens % BLOCK == 0


async def test_stop_token_ends_with_stop(engine):
    prompt = list(range(300, 340))
    _, tokens = await run(engine, "stop-probe", prompt, greedy(8))
    stop = tokens[3]
    frames, stopped = await run(engine, "stop", prompt, greedy(8, stop_token_ids=[stop]))
    assert frames[-1].finish_reason == "stop"
    assert frames[-1].stop_token_id == stop
    assert stopped == tokens[: tokens.index(stop) + 1]  # the stop token is included


async def test_logprobs(engine):
    frames, tokens = await run(engine, "logprobs", list(range(400, 430)), greedy(5, logprobs=2))
    logprobs = [lp for f in frames for lp in (f.logprobs or [])]
    assert [lp.token_id for lp in logprobs] == tokens
    for lp in logprobs:
        assert len(lp.top) == 2
        assert lp.top[0][0] == lp.token_id  # greedy: the sampled token ranks first
        assert lp.logprob == pytest.approx(lp.top[0][1])
        assert lp.top[0][1] >= lp.top[1][1]
        assert lp.logprob <= 0.0


async def test_prompt_longer_than_context_is_a_clear_error(engine):
    with pytest.raises(ServingError) as info:
        await run(engine, "too-long", [7] * (MAX_MODEL_LEN + 10), greedy(4))
    assert info.value.status == 400
    assert "maximum model length" in info.value.message
    assert engine.load().running == 0


async def test_invalid_sampling_is_a_clear_error(engine):
    with pytest.raises(ServingError) as info:
        await run(engine, "bad-temp", [1, 2, 3], wire.SamplingOptions(temperature=-1.0))
    assert info.value.status == 400
    assert "temperature" in info.value.message


async def _free(engine: VllmEngine) -> None:
    await eventually(
        engine.load,
        until=lambda load: load.running == 0 and load.kv_usage == 0.0,
        timeout=10,
        what="KV blocks freed",
    )


async def test_closing_the_stream_aborts_and_frees_kv(engine):
    stream = engine.generate(wire.GenerateRequest("abort-close", list(range(500, 500 + 300)), greedy(1000)))
    seen = 0
    async for _frame in stream:
        seen += 1
        if seen == 3:
            break
    assert engine.load().running == 1
    assert engine.load().kv_usage > 0.0
    await stream.aclose()
    await _free(engine)


async def test_cancelling_the_consumer_aborts_and_frees_kv(engine):
    started = asyncio.Event()

    async def consume():
        async for _frame in engine.generate(
            wire.GenerateRequest("abort-cancel", list(range(900, 1100)), greedy(1000))
        ):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _free(engine)


async def test_kv_events_report_stored_prompt_blocks(engine):
    events = engine.kv_events()
    prompt = list(range(1200, 1200 + 2 * BLOCK + 10))  # two full blocks and a partial one
    await run(engine, "kv-a", prompt, greedy(3))
    longer = prompt[: 2 * BLOCK] + list(range(1400, 1400 + BLOCK + 5))  # shares the first two blocks

    stored: dict[tuple[int, ...], wire.BlockStored] = {}

    async def next_batch() -> list[tuple[int, ...]]:
        for event in await asyncio.wait_for(anext(events), 10):
            if isinstance(event, wire.BlockStored):
                stored[tuple(event.token_ids)] = event
        return list(stored)

    key = tuple(prompt[: 2 * BLOCK])
    await eventually(
        next_batch, until=lambda seen: key in seen, timeout=10, interval=0, what="BlockStored for the prompt"
    )
    first = stored[tuple(prompt[: 2 * BLOCK])]
    assert first.block_size == BLOCK
    assert len(first.block_hashes) == 2
    assert first.parent_block_hash is None
    assert all(isinstance(h, int) and 0 <= h < 1 << 64 for h in first.block_hashes)

    await run(engine, "kv-b", longer, greedy(3))
    key = tuple(longer[2 * BLOCK : 3 * BLOCK])
    await eventually(
        next_batch,
        until=lambda seen: key in seen,
        timeout=10,
        interval=0,
        what="BlockStored for the extension",
    )
    # The new block chains onto the cached ones: a consumer can map the hashes.
    assert stored[tuple(longer[2 * BLOCK : 3 * BLOCK])].parent_block_hash == first.block_hashes[-1]
    await events.aclose()


async def test_shutdown_leaves_no_processes(engine):
    """Last in the module: stops the shared engine (the fixture's shutdown is then a no-op)."""
    engine_children = [p for p in engine.test_children if "resource_tracker" not in " ".join(p.cmdline())]
    assert engine_children, "the engine core should run in a child process"
    await engine.shutdown()
    _gone, alive = psutil.wait_procs(engine_children, timeout=10)
    assert not alive
    with pytest.raises(ServingError) as info:
        await run(engine, "after-shutdown", [1, 2, 3], greedy(1))
    assert info.value.status == 503
