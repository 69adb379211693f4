"""Mid-stream migration: a choice whose worker fails with a retryable error continues on another worker.

The fake workers behave as a greedy engine does: the continuation of a context is fixed, so a
request for the prompt plus the first k reply tokens yields the reply from token k on. Every
migrated request is checked to carry exactly the prompt plus the tokens already streamed.
"""

from __future__ import annotations

import pytest

from inference_graph import wire
from inference_graph.errors import ServingError, invalid_request, server_error, service_unavailable
from inference_graph.processing import Processor, RoundRobinStrategy
from inference_graph.runtime.errors import (
    FramesLostError,
    InstanceLostError,
    RemoteError,
    RequestTimeoutError,
)

from .fakes import FakeWorkers, Script
from .test_processor import REPLY, chat, collect, completion, text_of
from .test_processor import make as make_processor


class GreedyWorkers(FakeWorkers):
    """Workers of one deterministic model: ``reply`` continues the first request's prompt.

    ``failures[k]`` = (frames, error): the k-th call (0-based) raises ``error`` before that frame.
    """

    def __init__(self, reply: list[int], failures=None, finish_reason="length", seed=0):
        super().__init__(self._script, seed=seed)
        self.reply = reply
        self.failures = dict(failures or {})
        self.finish_reason = finish_reason
        self.prompt: list[int] | None = None

    def _script(self, request: wire.GenerateRequest) -> Script:
        call = len(self.calls) - 1
        if self.prompt is None:
            self.prompt = list(request.token_ids)
        prompt = self.prompt
        assert request.token_ids[: len(prompt)] == prompt
        done = len(request.token_ids) - len(prompt)
        assert request.token_ids[len(prompt) :] == self.reply[:done], "continuation is not prompt + streamed"
        frames, error = self.failures.get(call, (None, None))
        return Script(self.reply[done:], self.finish_reason, fail_after_frames=frames, failure=error)


class RecordingStrategy(RoundRobinStrategy):
    def __init__(self) -> None:
        super().__init__()
        self.picks: list[tuple[list[int], list[str]]] = []

    async def pick(self, token_ids, instances):
        self.picks.append((list(token_ids), sorted(instances)))
        return await super().pick(token_ids, instances)


def make(tokenizer, workers, instances=("w-1", "w-2"), limit=3, strategy=None) -> Processor:
    processor, _ = make_processor(tokenizer, None, instances, strategy, workers, migration_limit=limit)
    return processor


def lost(instance="w-1"):
    return InstanceLostError(instance)


async def test_lost_worker_mid_stream_continues_on_another_with_the_same_text_and_usage(tiny):
    reply = tiny.hf.encode(REPLY)
    strategy = RecordingStrategy()
    workers = GreedyWorkers(reply, failures={0: (3, lost())})
    processor = make(tiny, workers, strategy=strategy)
    frames = await collect(processor, chat())

    assert text_of(frames) == REPLY
    first, second = (request for request, _ in workers.calls)
    streamed = workers.frames_sent["req-0"]
    assert streamed == 3
    done = len(second.token_ids) - len(first.token_ids)
    assert 3 <= done < len(reply)
    assert second.token_ids == first.token_ids + reply[:done]
    assert second.sampling.max_tokens == first.sampling.max_tokens - done
    assert second.request_id == "req-0-m1"
    assert [instance for _, instance in workers.calls] == ["w-1", "w-2"]
    # routed again as a new request (prompt + streamed tokens), the failed worker excluded
    assert strategy.picks[-1] == (second.token_ids, ["w-2"])
    last = frames[-1]
    assert last.finish_reason == "length"
    assert last.usage == wire.Usage(len(first.token_ids), len(reply), 0, migrations=1)
    assert sum(f.num_tokens for f in frames) == len(reply)
    assert processor.migrations == 1
    assert workers.cancelled == ["req-0"]  # the failed stream was closed


@pytest.mark.parametrize("fail_at", range(1, 12))
async def test_every_split_point_gives_the_uninterrupted_text(smol, fail_at):
    """Multibyte characters, and a stop string, that straddle the migration come out whole."""
    reply_text = "Déjà vu à 東京タワー 🙂👍🏽 — ok. Answer: 42\n\nNext question"
    reply = smol.hf.encode(reply_text)
    workers = GreedyWorkers(reply, failures={0: (fail_at, lost())}, seed=fail_at)
    frames = await collect(make(smol, workers), completion(stop=["\n\nNext"]))
    assert all("\ufffd" not in f.text for f in frames)
    assert text_of(frames) == "Déjà vu à 東京タワー 🙂👍🏽 — ok. Answer: 42"
    assert frames[-1].stop_reason == "\n\nNext"

    uninterrupted = await collect(make(smol, GreedyWorkers(reply)), completion(stop=["\n\nNext"]))
    assert frames[-1].usage.completion_tokens == uninterrupted[-1].usage.completion_tokens


@pytest.mark.parametrize(
    "error",
    [
        lost(),
        RequestTimeoutError("ig.x.decode.generate.w-1", "idle", 5.0, "w-1"),
        RemoteError(service_unavailable("instance is shutting down").info, "w-1"),
        RemoteError(server_error("KV transfer failed", code="kv_transfer_error", retryable=True).info),
        ConnectionError("transport cut"),
    ],
    ids=["lost", "stalled", "shutting-down", "kv-transfer", "transport"],
)
async def test_retryable_server_errors_migrate(tiny, error):
    reply = tiny.hf.encode(REPLY)
    workers = GreedyWorkers(reply, failures={0: (2, error)})
    frames = await collect(make(tiny, workers), chat())
    assert text_of(frames) == REPLY
    assert frames[-1].usage.migrations == 1


@pytest.mark.parametrize(
    "error",
    [
        RemoteError(invalid_request("bad sampling", param="top_p").info, "w-1"),
        RemoteError(wire.ErrorInfo(429, wire.ErrorType.RATE_LIMIT, "busy", retryable=True), "w-1"),
        server_error("engine died"),
    ],
    ids=["400", "429", "500"],
)
async def test_client_errors_and_non_retryable_errors_do_not_migrate(tiny, error):
    workers = GreedyWorkers(tiny.hf.encode(REPLY), failures={0: (2, error)})
    processor = make(tiny, workers)
    with pytest.raises(ServingError) as caught:
        await collect(processor, chat())
    assert caught.value.info == error.info
    assert len(workers.calls) == 1 and processor.migrations == 0


async def test_limit_zero_turns_migration_off(tiny):
    workers = GreedyWorkers(tiny.hf.encode(REPLY), failures={0: (2, lost())})
    with pytest.raises(InstanceLostError):
        await collect(make(tiny, workers, limit=0), chat())
    assert len(workers.calls) == 1


async def test_migrations_stop_at_the_limit(tiny):
    reply = tiny.hf.encode(REPLY)
    workers = GreedyWorkers(reply, failures={k: (1, lost(f"w-{k}")) for k in range(10)})
    processor = make(tiny, workers, instances=[f"w-{k}" for k in range(10)], limit=2)
    frames = []
    with pytest.raises(InstanceLostError):
        async for frame in processor.process(chat()):
            frames.append(frame)
    assert len(workers.calls) == 3 and processor.migrations == 2
    assert len({instance for _, instance in workers.calls}) == 3  # never back to a failed worker
    assert REPLY.startswith(text_of(frames))


async def test_no_other_live_worker_fails_with_the_original_error(tiny):
    workers = GreedyWorkers(tiny.hf.encode(REPLY), failures={0: (2, lost())})
    processor = make(tiny, workers, instances=["w-1"])
    with pytest.raises(InstanceLostError):
        await collect(processor, chat())
    assert processor.migrations == 0


async def test_frames_lost_in_transport_continue_on_the_same_worker_when_it_is_the_only_one(tiny):
    """A NATS restart loses frames of a live worker's stream: the only worker takes the continuation."""
    lost_frames = FramesLostError("ig.ns.decode.generate.w-1", 3, 5, "w-1")
    workers = GreedyWorkers(tiny.hf.encode(REPLY), failures={0: (2, lost_frames)})
    processor = make(tiny, workers, instances=["w-1"])
    frames = await collect(processor, chat())
    assert text_of(frames) == REPLY
    assert [instance for _, instance in workers.calls] == ["w-1", "w-1"] and processor.migrations == 1


async def test_failure_before_the_first_token_migrates(tiny):
    error = RemoteError(service_unavailable("instance is shutting down").info, "w-1")
    workers = GreedyWorkers(tiny.hf.encode(REPLY), failures={0: (0, error)})
    frames = await collect(make(tiny, workers), chat())
    assert text_of(frames) == REPLY
    assert workers.calls[0][0].token_ids == workers.calls[1][0].token_ids


async def test_min_tokens_shrink_with_the_tokens_already_streamed(tiny):
    reply = tiny.hf.encode(REPLY)
    workers = GreedyWorkers(reply, failures={0: (2, lost())})
    sampling = wire.SamplingOptions(max_tokens=len(reply), min_tokens=len(reply) - 1)
    frames = await collect(make(tiny, workers), chat(sampling=sampling))
    first, second = (request for request, _ in workers.calls)
    done = len(second.token_ids) - len(first.token_ids)
    assert second.sampling.min_tokens == len(reply) - 1 - done
    assert second.sampling.max_tokens == len(reply) - done
    assert text_of(frames) == REPLY


async def test_one_of_n_choices_migrates_and_the_others_go_on(tiny):
    reply = tiny.hf.encode(REPLY)
    workers = GreedyWorkers(reply, failures={1: (2, lost())})  # the second call: choice 1
    frames = await collect(make(tiny, workers), chat(n=2))
    assert text_of(frames, 0) == text_of(frames, 1) == REPLY
    finals = {f.index: f.usage for f in frames if f.usage is not None}
    assert (finals[0].migrations, finals[1].migrations) == (0, 1)
    assert finals[0].completion_tokens == finals[1].completion_tokens == len(reply)


async def test_cached_tokens_of_a_migrated_request_stay_within_the_prompt(tiny):
    reply = tiny.hf.encode(REPLY)

    class Cached(GreedyWorkers):
        def _script(self, request):
            script = super()._script(request)
            script.num_cached_tokens = len(request.token_ids) - 1  # the new worker had it all cached
            return script

    workers = Cached(reply, failures={0: (3, lost())})
    frames = await collect(make(tiny, workers), chat())
    prompt_tokens = len(workers.calls[0][0].token_ids)
    assert workers.calls[1][0].token_ids[prompt_tokens:]  # the second worker cached more than the prompt
    assert frames[-1].usage.cached_tokens == frames[-1].usage.prompt_tokens == prompt_tokens


async def test_a_failure_after_the_last_token_finishes_the_choice_without_migrating(tiny):
    reply = tiny.hf.encode(REPLY)

    class LostBeforeTheFinish(GreedyWorkers):
        async def generate(self, request, instance_id):
            self.calls.append((request, instance_id))
            yield wire.GenerateOutput(token_ids=reply[: request.sampling.max_tokens])
            raise lost(instance_id)

    workers = LostBeforeTheFinish(reply)
    sampling = wire.SamplingOptions(max_tokens=len(reply))
    frames = await collect(make(tiny, workers), chat(sampling=sampling))
    assert text_of(frames) == REPLY
    assert (frames[-1].finish_reason, frames[-1].usage.completion_tokens) == ("length", len(reply))
    assert frames[-1].usage.migrations == 0 and len(workers.calls) == 1
