"""In-memory doubles for the processor's I/O boundaries (``ports``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from inference_graph import wire
from inference_graph.errors import server_error


@dataclass
class Script:
    """What a fake worker generates for one request."""

    token_ids: list[int]
    finish_reason: str = "length"
    stop_token_id: int | None = None
    fail_after_frames: int | None = None  # raise a server_error (or ``failure``) before this frame
    failure: BaseException | None = None
    num_cached_tokens: int = 0
    hang: bool = False  # never send the first frame


@dataclass
class FakeWorkers:
    """A ``WorkerClient`` that streams scripted token ids in frames of 1 to 3 tokens."""

    script: Callable[[wire.GenerateRequest], Script]
    seed: int = 0
    calls: list[tuple[wire.GenerateRequest, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # request ids closed before their last frame
    frames_sent: dict[str, int] = field(default_factory=dict)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)  # a ``hang`` script has started

    async def generate(
        self, request: wire.GenerateRequest, instance_id: str
    ) -> AsyncIterator[wire.GenerateOutput]:
        self.calls.append((request, instance_id))
        script = self.script(request)
        ids = script.token_ids[: request.sampling.max_tokens]
        finish = script.finish_reason if len(ids) == len(script.token_ids) else "length"
        chunks = _chunks(ids, random.Random(self.seed + len(self.calls)))
        completed = False
        try:
            if script.hang:
                self.hanging.set()
                await asyncio.Event().wait()
            for number, chunk in enumerate(chunks):
                if script.fail_after_frames == number:
                    raise script.failure or server_error("engine died")
                last = number == len(chunks) - 1
                completed = last
                self.frames_sent[request.request_id] = number + 1
                yield wire.GenerateOutput(
                    token_ids=chunk,
                    finish_reason=finish if last else None,
                    num_prompt_tokens=len(request.token_ids),
                    num_cached_tokens=script.num_cached_tokens,
                    logprobs=_logprobs(chunk) if request.sampling.logprobs is not None else None,
                    stop_token_id=script.stop_token_id if last and finish == "stop" else None,
                )
                await asyncio.sleep(0)
        finally:
            if not completed:
                self.cancelled.append(request.request_id)


def _chunks(ids: list[int], rng: random.Random) -> list[list[int]]:
    chunks, position = [], 0
    while position < len(ids):
        size = rng.randint(1, 3)
        chunks.append(ids[position : position + size])
        position += size
    return chunks or [[]]


def _logprobs(chunk: list[int]) -> list[wire.TokenLogprob]:
    return [wire.TokenLogprob(token_id=t, logprob=-0.5, top=[(t, -0.5), (t + 1, -1.5)]) for t in chunk]


@dataclass
class StaticDirectory:
    """A ``WorkerDirectory`` over a fixed list."""

    ids: list[str]

    def instances(self) -> list[str]:
        return list(self.ids)
