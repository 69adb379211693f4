"""MockerEngine through the ``Engine`` interface: outputs, cache reporting, events, aborts, many engines."""

from __future__ import annotations

import asyncio

import pytest

from inference_graph import wire
from inference_graph.core.spec import EngineSpec, MockerSpec
from inference_graph.engines.factory import create_engine
from inference_graph.engines.mocker import MockerEngine
from inference_graph.errors import ServingError
from support import eventually

BS = 16
VOCAB, EOS = 512, 2  # the fake model of conftest.model_dir


def greedy(max_tokens: int, **kwargs) -> wire.SamplingOptions:
    return wire.SamplingOptions(max_tokens=max_tokens, temperature=0.0, **kwargs)


async def run(engine, request_id, prompt, sampling):
    frames = [f async for f in engine.generate(wire.GenerateRequest(request_id, list(prompt), sampling))]
    return frames, [t for f in frames for t in f.token_ids]


def awaiting(task: asyncio.Task) -> str:
    """The innermost coroutine a suspended task awaits, as ``function@file``."""
    coro, where = task.get_coro(), ""
    while getattr(coro, "cr_frame", None) is not None:
        code = coro.cr_frame.f_code
        where = f"{code.co_name}@{code.co_filename.rsplit('/', 1)[-1]}"
        coro = coro.cr_await
    return where


def replay(index: set[int], batch: list[wire.KvEvent]) -> None:
    for event in batch:
        if isinstance(event, wire.BlockStored):
            index.update(event.block_hashes)
        elif isinstance(event, wire.BlockRemoved):
            index.difference_update(event.block_hashes)
        else:
            index.clear()


async def test_frames_like_vllm(make_engine):
    # Steps that take (a little) time: the consumer runs between them. Zero-time steps
    # (instant timing) run in bursts and leave several steps' tokens in one frame.
    engine = await make_engine(block_size=BS, timing="polynomial", speedup=1000)
    assert engine.info.block_size == BS and engine.info.num_kv_blocks == 16384
    frames, tokens = await run(engine, "a", range(10, 50), greedy(12))
    assert len(tokens) == 12 and len(frames) == 12  # a consumer that keeps up: one frame per step
    assert frames[-1].finish_reason == "length" and frames[-1].stop_token_id is None
    assert all(f.finish_reason is None for f in frames[:-1])
    assert all(f.num_prompt_tokens == 40 for f in frames)
    assert all(4 <= t < VOCAB for t in tokens)  # no special token drawn


async def test_determinism(make_engine):
    engine = await make_engine(block_size=BS, seed=5)
    other_seed = await make_engine(block_size=BS, seed=6)
    prompt = range(100, 160)
    _, g1 = await run(engine, "g1", prompt, greedy(20))
    _, g2 = await run(engine, "g2", prompt, greedy(20))
    _, g3 = await run(other_seed, "g1", prompt, greedy(20))
    assert g1 == g2 != g3  # greedy: a function of the context and the engine seed
    seeded = wire.SamplingOptions(max_tokens=20, temperature=0.8, seed=42)
    _, s1 = await run(engine, "s1", prompt, seeded)
    _, s2 = await run(engine, "s2", prompt, seeded)
    assert s1 == s2 != g1
    random = wire.SamplingOptions(max_tokens=20, temperature=0.8)
    _, r1 = await run(engine, "r1", prompt, random)
    _, r1_again = await run(engine, "r1", prompt, random)
    _, r2 = await run(engine, "r2", prompt, random)
    assert r1 == r1_again != r2  # unseeded: per request id


async def test_greedy_continuation_is_consistent_across_a_split(make_engine):
    """The decode half of a disaggregated request (prompt + first token) continues identically."""
    engine = await make_engine(block_size=BS)
    prompt = list(range(200, 237))
    _, whole = await run(engine, "whole", prompt, greedy(10))
    _, rest = await run(engine, "rest", prompt + whole[:1], greedy(9))
    assert rest == whole[1:]


async def test_prefix_cache_hit_is_reported(make_engine):
    engine = await make_engine(block_size=BS)
    prompt = list(range(300, 300 + 5 * BS + 7))
    first, _ = await run(engine, "c1", prompt, greedy(2))
    second, _ = await run(engine, "c2", prompt, greedy(2))
    assert first[0].num_cached_tokens == 0
    assert second[0].num_cached_tokens == 5 * BS
    exact = prompt[: 5 * BS]
    third, _ = await run(engine, "c3", exact, greedy(2))
    assert third[0].num_cached_tokens == 4 * BS  # capped at prompt_len - 1, block-aligned


async def test_prefix_caching_disabled(make_engine):
    engine = await make_engine(block_size=BS, enable_prefix_caching=False)
    prompt = list(range(300, 400))
    await run(engine, "d1", prompt, greedy(2))
    second, _ = await run(engine, "d2", prompt, greedy(2))
    assert second[0].num_cached_tokens == 0 and not engine._events


async def test_stop_tokens_eos_and_logprobs(make_engine):
    engine = await make_engine(block_size=BS, eos_probability=1.0)
    frames, tokens = await run(engine, "eos", range(10, 30), greedy(8))
    assert tokens == [EOS] and frames[-1].finish_reason == "stop" and frames[-1].stop_token_id is None
    _, tokens = await run(engine, "ign", range(10, 30), greedy(8, ignore_eos=True))
    assert len(tokens) == 8 and EOS not in tokens
    _, tokens = await run(engine, "min", range(10, 30), greedy(8, min_tokens=3))
    assert len(tokens) == 4 and tokens[-1] == EOS
    plain = await make_engine(block_size=BS)
    _, probe = await run(plain, "probe", range(10, 30), greedy(8))
    frames, tokens = await run(plain, "stop", range(10, 30), greedy(8, stop_token_ids=[probe[2]]))
    assert tokens == probe[:3] and frames[-1].stop_token_id == probe[2]
    frames, tokens = await run(plain, "lp", range(10, 30), greedy(5, logprobs=3))
    logprobs = [lp for f in frames for lp in f.logprobs or []]
    assert [lp.token_id for lp in logprobs] == tokens
    for lp in logprobs:
        assert len(lp.top) == 3 and lp.top[0] == (lp.token_id, lp.logprob)
        assert 0 >= lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
        assert len({tid for tid, _ in lp.top}) == 3
    frames, _ = await run(plain, "nolp", range(10, 30), greedy(2))
    assert all(f.logprobs is None for f in frames)


@pytest.mark.parametrize(
    ("prompt", "sampling", "message"),
    [
        ([5] * 2049, greedy(4), "longer than the maximum model length of 2048"),
        ([5] * 2048, greedy(4), "plus the number of requested output tokens"),
        ([], greedy(4), "cannot be empty"),
        ([5, VOCAB], greedy(4), f"Token id {VOCAB} is out of vocabulary"),
        ([5], wire.SamplingOptions(temperature=-1.0), "temperature must be non-negative"),
        ([5], wire.SamplingOptions(top_p=0.0), "top_p must be in"),
        ([5], wire.SamplingOptions(max_tokens=0), "max_tokens must be at least 1"),
        ([5], wire.SamplingOptions(max_tokens=2, min_tokens=3), "min_tokens must be less than"),
        ([5], wire.SamplingOptions(logprobs=21), "greater than max allowed: 20"),
    ],
)
async def test_bad_requests_are_400(make_engine, prompt, sampling, message):
    engine = await make_engine()
    with pytest.raises(ServingError) as info:
        await run(engine, "bad", prompt, sampling)
    assert info.value.status == 400
    assert message in info.value.message
    assert engine.load().running == engine.load().waiting == 0


async def test_kv_events_replay_to_the_cached_set(make_engine):
    engine = await make_engine(block_size=BS, num_kv_blocks=24, max_model_len=256)  # evictions happen
    index: set[int] = set()
    kinds: set[type] = set()

    async def consume():
        async for batch in engine.kv_events():
            kinds.update(type(e) for e in batch)
            replay(index, batch)

    consumer = asyncio.create_task(consume())
    shared = list(range(10, 10 + 3 * BS))
    await asyncio.gather(
        *(
            run(engine, f"k{i}", shared + list(range(100 + 50 * i, 130 + 50 * i)), greedy(20))
            for i in range(6)
        )
    )
    await eventually(lambda: index, until=lambda seen: seen == engine.kv.cached_hashes() and seen)
    assert kinds == {wire.BlockStored, wire.BlockRemoved}
    assert engine.scheduler.num_preemptions > 0  # 6 x ~6 blocks on 24 blocks
    assert engine.reset_prefix_cache()
    await eventually(lambda: index, until=lambda seen: not seen)
    consumer.cancel()


async def test_generated_blocks_are_cached_too(make_engine):
    engine = await make_engine(block_size=BS)
    prompt = list(range(10, 10 + BS))
    _, tokens = await run(engine, "gen", prompt, greedy(3 * BS))
    # prompt block + the full blocks of generated tokens whose KV was computed (not the last token's)
    assert len(engine.kv.cached_hashes()) == (len(prompt) + len(tokens) - 1) // BS
    frames, _ = await run(engine, "again", prompt + tokens[: 2 * BS], greedy(1))
    assert frames[0].num_cached_tokens == 2 * BS  # 3 blocks cached, capped at len - 1


async def test_closing_the_stream_aborts_and_frees_kv(make_engine):
    engine = await make_engine(block_size=BS, timing="polynomial", speedup=20)
    stream = engine.generate(wire.GenerateRequest("close", list(range(10, 300)), greedy(1000)))
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    assert engine.load().running == 1 and engine.load().kv_usage > 0
    await stream.aclose()
    assert engine.load() == engine.load().__class__(running=0, waiting=0, kv_usage=0.0)


async def test_cancelling_the_consumer_frees_kv(make_engine):
    engine = await make_engine(block_size=BS, timing="polynomial", speedup=20, max_num_seqs=1)
    started = asyncio.Event()

    async def consume(request_id):
        async for _ in engine.generate(wire.GenerateRequest(request_id, list(range(10, 200)), greedy(1000))):
            started.set()

    running = asyncio.create_task(consume("cancel-running"))
    waiting = asyncio.create_task(consume("cancel-waiting"))  # max_num_seqs=1: queued
    await asyncio.wait_for(started.wait(), 5)
    assert engine.load().running == 1 and engine.load().waiting == 1
    for task in (running, waiting):
        task.cancel()
    await asyncio.gather(running, waiting, return_exceptions=True)
    load = engine.load()
    assert (load.running, load.waiting, load.kv_usage) == (0, 0, 0.0)


async def test_abort_by_id_ends_the_stream(make_engine):
    engine = await make_engine(block_size=BS, timing="polynomial", speedup=20)
    stream = engine.generate(wire.GenerateRequest("by-id", list(range(10, 100)), greedy(1000)))
    first = await anext(stream)
    await engine.abort("by-id")
    rest = [f async for f in stream]
    assert first.finish_reason is None and rest[-1].finish_reason == "abort"
    assert engine.load().kv_usage == 0.0


async def test_shutdown_fails_streams_and_refuses_requests(make_engine):
    engine = await make_engine(block_size=BS, timing="polynomial", speedup=20)
    stream = engine.generate(wire.GenerateRequest("live", list(range(10, 100)), greedy(1000)))
    await anext(stream)
    await engine.shutdown()
    with pytest.raises(ServingError) as info:
        await anext(stream)
    assert info.value.status == 503
    with pytest.raises(ServingError) as info:
        await run(engine, "after", [1, 2, 3], greedy(1))
    assert info.value.status == 503


async def test_thirty_two_engines_in_one_process(model_dir):
    spec = EngineSpec(
        type="mocker",
        block_size=BS,
        mocker=MockerSpec(timing="polynomial", speedup=50, num_kv_blocks=256),
    )
    engines = [create_engine(spec, model_dir, f"m{i}") for i in range(32)]
    assert all(isinstance(e, MockerEngine) for e in engines)
    await asyncio.gather(*(e.start() for e in engines))
    try:
        prompts = {i: list(range(10 + i, 10 + i + 3 * BS)) for i in range(32)}
        results = await asyncio.gather(
            *(run(e, f"r{j}", prompts[i], greedy(8)) for i, e in enumerate(engines) for j in range(3))
        )
        assert all(len(tokens) == 8 for _, tokens in results)
        for e in engines:  # each engine cached only its own prompt (3 blocks) + output
            own = e.kv.cached_hashes()
            assert len(own) == 3
            assert not own & set().union(*(x.kv.cached_hashes() for x in engines if x is not e))
            assert e.load().running == 0 and e.load().kv_usage == 0.0
        # Idle engines wait on an event: no CPU spent while nothing happens. Each step loop is
        # parked in Event.wait (not a timed sleep, not ready to run), and letting the event loop
        # run many times wakes none of them: no step is taken and the scheduler is not even asked.
        asked = [0] * len(engines)
        for i, e in enumerate(engines):
            has_work = e.scheduler.has_work

            def counted(i=i, has_work=has_work):
                asked[i] += 1
                return has_work()

            e.scheduler.has_work = counted
        steps = [e.num_steps for e in engines]
        for _ in range(100):
            await asyncio.sleep(0)  # yields to the event loop; not a wait for anything
        assert asked == [0] * len(engines) and [e.num_steps for e in engines] == steps
        parked = {awaiting(e._task) for e in engines}
        assert parked == {"wait@locks.py"}, parked  # Event.wait
    finally:
        await asyncio.gather(*(e.shutdown() for e in engines))


async def test_reads_the_real_model_config(tiny_model_path):
    engine = MockerEngine(EngineSpec(type="mocker"), tiny_model_path)
    await engine.start()
    try:
        assert engine.vocab.vocab_size == 2048 and engine.vocab.eos_token_id == 2
        _, tokens = await run(engine, "real", range(3, 40), greedy(5))
        assert all(3 <= t < 2048 for t in tokens)
    finally:
        await engine.shutdown()


async def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        await MockerEngine(EngineSpec(type="mocker"), str(tmp_path)).start()
    spec = EngineSpec(type="mocker", max_model_len=4096, mocker=MockerSpec(num_kv_blocks=10))
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        await MockerEngine(spec, str(tmp_path)).start()
