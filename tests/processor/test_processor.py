import asyncio
import collections

import pytest

from inference_graph import wire
from inference_graph.errors import ServingError, server_error
from inference_graph.processing import (
    Processor,
    RandomStrategy,
    RoundRobinStrategy,
    WorkerUnreachable,
)

from .fakes import FakeWorkers, Script, StaticDirectory

REPLY = "The capital of France is Paris. Café, 東京 and 🙂 too."
MAX_MODEL_LEN = 256


def make(tokenizer, script, instances=("w-1",), strategy=None, workers=None, **kwargs):
    """A processor over fake workers that run ``script`` (or over ``workers``)."""
    workers = workers or FakeWorkers(script if callable(script) else (lambda _request: script))
    processor = Processor(
        tokenizer,
        MAX_MODEL_LEN,
        "test-model",
        workers,
        StaticDirectory(list(instances)),
        strategy or RoundRobinStrategy(),
        **kwargs,
    )
    return processor, workers


def chat(content="What is the capital of France?", **fields) -> wire.ProcessRequest:
    sampling = fields.pop("sampling", wire.SamplingOptions(max_tokens=MAX_MODEL_LEN))
    return wire.ProcessRequest(
        request_id="req",
        model="test-model",
        kind="chat",
        sampling=sampling,
        messages=[wire.ChatMessage(role="user", content=content)],
        **fields,
    )


def completion(prompt="Paris is", **fields) -> wire.ProcessRequest:
    sampling = fields.pop("sampling", wire.SamplingOptions(max_tokens=MAX_MODEL_LEN))
    return wire.ProcessRequest(
        request_id="req", model="test-model", kind="completion", sampling=sampling, prompt=prompt, **fields
    )


async def collect(processor, request) -> list[wire.ProcessOutput]:
    return [frame async for frame in processor.process(request)]


def text_of(frames, index=0) -> str:
    return "".join(f.text for f in frames if f.index == index)


async def test_chat_streams_the_reply_with_usage(tiny):
    reply_ids = tiny.hf.encode(REPLY)
    script = Script([*reply_ids, tiny.hf.eos_token_id], finish_reason="stop", num_cached_tokens=4)
    processor, workers = make(tiny, script)
    frames = await collect(processor, chat())
    request, instance = workers.calls[0]
    assert request.token_ids == tiny.hf.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert (request.request_id, request.model, instance) == ("req-0", "test-model", "w-1")
    assert request.sampling.max_tokens == MAX_MODEL_LEN - len(request.token_ids)  # "absent": clamped
    assert text_of(frames) == REPLY
    assert len(frames) > 3 and all(f.finish_reason is None and f.usage is None for f in frames[:-1])
    last = frames[-1]
    assert (last.finish_reason, last.stop_reason) == ("stop", None)
    assert last.usage == wire.Usage(len(request.token_ids), len(reply_ids) + 1, 4)
    assert sum(f.num_tokens for f in frames) == len(reply_ids) + 1
    assert workers.cancelled == []


async def test_multibyte_reply_never_streams_replacement_characters(smol):
    reply = "Déjà vu à 東京タワー 🙂👍🏽 — ok"
    processor, _ = make(smol, Script(smol.hf.encode(reply)))
    frames = await collect(processor, chat())
    assert all("\ufffd" not in f.text for f in frames)
    assert text_of(frames) == reply
    assert frames[-1].finish_reason == "length"


@pytest.mark.parametrize(("include", "expected"), [(False, "The capital"), (True, "The capital of")])
async def test_stop_string_cuts_text_and_cancels_the_worker(tiny, include, expected):
    reply_ids = tiny.hf.encode(REPLY)
    processor, workers = make(tiny, Script(reply_ids))
    frames = await collect(processor, chat(stop=[" of", "zzz"], include_stop_str_in_output=include))
    assert text_of(frames) == expected
    assert (frames[-1].finish_reason, frames[-1].stop_reason) == ("stop", " of")
    assert workers.cancelled == ["req-0"]
    # generation "ends" at the token completing the stop string, as with a token-by-token engine
    consumed = next(k for k in range(len(reply_ids) + 1) if " of" in tiny.decode(reply_ids[:k]))
    assert frames[-1].usage.completion_tokens == consumed < len(reply_ids)


async def test_stop_string_split_across_frames(smol):
    reply = "Answer: 42\n\nNext question"
    ids = smol.hf.encode(reply)
    assert [smol.decode([i]) for i in ids[5:8]] == ["\n", "\n", "Next"]  # the stop string spans 3 tokens
    processor, workers = make(smol, Script(ids))
    for seed in range(5):  # different frame splits
        workers.seed = seed
        frames = await collect(processor, completion(stop=["\n\nNext"]))
        assert text_of(frames) == "Answer: 42"
        assert frames[-1].stop_reason == "\n\nNext"


async def test_held_partial_stop_string_is_released_at_the_end(tiny):
    processor, _ = make(tiny, Script(tiny.hf.encode("one two thr"), finish_reason="length"))
    frames = await collect(processor, chat(stop=["three"]))
    assert text_of(frames) == "one two thr"
    assert (frames[-1].finish_reason, frames[-1].stop_reason) == ("length", None)


async def test_stop_token_id_is_the_stop_reason_and_not_rendered(tiny):
    ids = tiny.hf.encode("hello world")
    processor, _ = make(tiny, Script([*ids, 7], finish_reason="stop", stop_token_id=7))
    frames = await collect(processor, chat(sampling=wire.SamplingOptions(max_tokens=50, stop_token_ids=[7])))
    assert text_of(frames) == "hello world"
    assert (frames[-1].finish_reason, frames[-1].stop_reason) == ("stop", 7)
    assert frames[-1].usage.completion_tokens == len(ids) + 1


async def test_min_tokens_delays_stop_strings(tiny):
    ids = tiny.hf.encode("a b a b a b")
    processor, _ = make(tiny, Script(ids))
    frames = await collect(
        processor, chat(stop=["b"], sampling=wire.SamplingOptions(max_tokens=50, min_tokens=3))
    )
    assert text_of(frames) == "a b a "


async def test_n_choices_run_concurrently_with_seeds(tiny):
    replies = {0: "zero zero", 1: "one one one", 2: "two"}
    processor, workers = make(
        tiny, lambda request: Script(tiny.hf.encode(replies[int(request.request_id.rsplit("-", 1)[1])]))
    )
    sampling = wire.SamplingOptions(max_tokens=50, seed=100)
    frames = await collect(processor, chat(n=3, sampling=sampling))
    assert sorted(r.request_id for r, _ in workers.calls) == ["req-0", "req-1", "req-2"]
    assert {r.request_id: r.sampling.seed for r, _ in workers.calls} == {
        "req-0": 100,
        "req-1": 101,
        "req-2": 102,
    }
    assert {instance for _, instance in workers.calls} == {"w-1"}
    finals = {f.index: f for f in frames if f.finish_reason is not None}
    assert sorted(finals) == [0, 1, 2]
    for index, reply in replies.items():
        assert text_of(frames, index) == reply
        assert finals[index].usage.completion_tokens == len(tiny.hf.encode(reply))
    indices = [f.index for f in frames]
    assert indices != sorted(indices)  # interleaved, not one choice after another


async def test_no_seed_stays_none(tiny):
    processor, workers = make(tiny, Script(tiny.hf.encode("hi")))
    await collect(processor, chat(n=2, sampling=wire.SamplingOptions(max_tokens=50)))
    assert [r.sampling.seed for r, _ in workers.calls] == [None, None]


async def test_round_robin_alternates_across_instances(tiny):
    processor, workers = make(tiny, Script(tiny.hf.encode("hi")), instances=("w-2", "w-1"))
    for _ in range(4):
        await collect(processor, chat())
    assert [instance for _, instance in workers.calls] == ["w-1", "w-2", "w-1", "w-2"]


async def test_random_spreads_across_instances(tiny):
    instances = ("w-1", "w-2", "w-3")
    processor, workers = make(tiny, Script(tiny.hf.encode("hi")), instances, RandomStrategy(seed=1))
    for _ in range(30):
        await collect(processor, chat())
    assert set(collections.Counter(instance for _, instance in workers.calls)) == set(instances)


async def test_no_instances_is_503(tiny):
    processor, _ = make(tiny, Script([]), instances=())
    with pytest.raises(ServingError) as caught:
        await collect(processor, chat())
    assert (caught.value.status, caught.value.type) == (503, "service_unavailable_error")


class UnreachableInstances(FakeWorkers):
    """Instances in ``dead`` refuse every request before the first frame, as a
    worker that died but is still listed in discovery does."""

    def __init__(self, script, dead):
        super().__init__(script)
        self.dead = set(dead)

    async def generate(self, request, instance_id):
        if instance_id in self.dead:
            self.calls.append((request, instance_id))
            raise WorkerUnreachable(instance_id)
        async for output in super().generate(request, instance_id):
            yield output


async def test_unreachable_worker_is_skipped_before_anything_is_generated(tiny):
    reply = tiny.encode_text("Paris.")
    workers = UnreachableInstances(lambda _request: Script(reply), dead={"w-1"})
    processor = Processor(
        tiny, MAX_MODEL_LEN, "test-model", workers, StaticDirectory(["w-1", "w-2"]), RoundRobinStrategy()
    )
    frames = await collect(processor, chat())
    assert text_of(frames) == "Paris."
    assert [instance for _, instance in workers.calls] == ["w-1", "w-2"]


async def test_all_workers_unreachable_is_503(tiny):
    workers = UnreachableInstances(lambda _request: Script([1]), dead={"w-1", "w-2"})
    processor = Processor(
        tiny, MAX_MODEL_LEN, "test-model", workers, StaticDirectory(["w-1", "w-2"]), RoundRobinStrategy()
    )
    with pytest.raises(ServingError) as caught:
        await collect(processor, chat())
    assert caught.value.info.status == 503
    assert sorted(instance for _, instance in workers.calls) == ["w-1", "w-2"]


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (chat(sampling=wire.SamplingOptions(max_tokens=250)), "max_tokens"),
        (chat(content="Paris " * 300), "messages"),
        (completion(prompt=list(range(10, 10 + MAX_MODEL_LEN))), "prompt"),
    ],
)
async def test_context_length_errors(tiny, request_, param):
    processor, workers = make(tiny, Script([]))
    with pytest.raises(ServingError) as caught:
        await collect(processor, request_)
    info = caught.value.info
    assert (info.status, info.param, info.code) == (400, param, "context_length_exceeded")
    assert workers.calls == []


async def test_worker_error_mid_stream(tiny):
    processor, _ = make(tiny, Script(tiny.hf.encode(REPLY), fail_after_frames=2))
    frames = []
    with pytest.raises(ServingError) as caught:
        async for frame in processor.process(chat()):
            frames.append(frame)
    assert frames and caught.value.info == server_error("engine died").info


async def test_lost_instance_is_503_and_other_choices_are_cancelled(tiny):
    def script(request):
        if request.request_id == "req-1":
            return Script(
                tiny.hf.encode(REPLY), fail_after_frames=1, failure=ConnectionError("instance w-1 gone")
            )
        return Script(tiny.hf.encode(REPLY * 3))

    processor, workers = make(tiny, script)
    with pytest.raises(ServingError) as caught:
        await collect(processor, chat(n=2))
    assert caught.value.info.status == 503 and "instance w-1 gone" in caught.value.info.message
    assert sorted(workers.cancelled) == ["req-0", "req-1"]


async def test_stream_ending_without_finish_is_an_error(tiny):
    class Truncated(FakeWorkers):
        async def generate(self, request, instance_id):
            yield wire.GenerateOutput(token_ids=tiny.hf.encode("hi"))

    processor, _ = make(tiny, Script([]))
    processor._workers = Truncated(lambda _: Script([]))
    with pytest.raises(ServingError, match="without finishing"):
        await collect(processor, chat())


async def test_stalled_worker_times_out(tiny):
    processor, workers = make(tiny, Script([], hang=True), stall_timeout=0.05)
    with pytest.raises(ServingError, match="sent nothing") as caught:
        await collect(processor, chat())
    assert caught.value.info.status == 503 and workers.cancelled == ["req-0"]


async def test_client_going_away_cancels_worker_requests(tiny):
    processor, workers = make(tiny, Script(tiny.hf.encode(REPLY * 3)))
    stream = processor.process(chat(n=2))
    await anext(stream)
    await stream.aclose()
    assert sorted(workers.cancelled) == ["req-0", "req-1"]


async def test_task_cancellation_cancels_worker_requests(tiny):
    processor, workers = make(tiny, Script([], hang=True))
    task = asyncio.create_task(collect(processor, chat()))
    await asyncio.wait_for(workers.hanging.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert workers.cancelled == ["req-0"]


async def test_echo_prepends_the_prompt(tiny):
    processor, _ = make(tiny, Script(tiny.hf.encode(" the river")))
    frames = await collect(processor, completion("Paris is", echo=True, n=2))
    for index in (0, 1):
        assert text_of(frames, index) == "Paris is the river"
    frames = await collect(processor, completion(tiny.hf.encode("Paris is"), echo=True))
    assert text_of(frames) == "Paris is the river"


async def test_logprobs_are_detokenized(smol):
    ids = smol.hf.encode(" 東京 ok")
    processor, _ = make(smol, Script(ids))
    frames = await collect(processor, chat(sampling=wire.SamplingOptions(max_tokens=50, logprobs=1)))
    logprobs = [entry for f in frames for entry in f.logprobs or []]
    assert len(logprobs) == len(ids)
    assert b"".join(bytes(entry.bytes) for entry in logprobs) == " 東京 ok".encode()
    assert any(entry.token.startswith("bytes:") for entry in logprobs)
    last = logprobs[-1]
    assert (last.token, last.logprob) == (" ok", -0.5)
    assert last.top[0] == (" ok", -0.5, list(b" ok"))
    alternative, raw = smol.logprob_token(ids[-1] + 1)
    assert last.top[1] == (alternative, -1.5, raw)


async def test_logprobs_stop_at_the_stop_string(tiny):
    processor, _ = make(tiny, Script(tiny.hf.encode(REPLY)))
    frames = await collect(
        processor, chat(stop=[" of"], sampling=wire.SamplingOptions(max_tokens=50, logprobs=0))
    )
    logprobs = [entry for f in frames for entry in f.logprobs or []]
    assert len(logprobs) == frames[-1].usage.completion_tokens
