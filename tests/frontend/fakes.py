"""In-memory doubles for the frontend's two ports (the sanctioned test doubles for this boundary)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable

from inference_graph import errors, wire
from inference_graph.roles.frontend import ModelCard
from support import eventually

MODEL = "test-model"
MAX_MODEL_LEN = 128

# A script item: a frame to yield, an exception to raise, or seconds to sleep.
Item = wire.ProcessOutput | BaseException | float
Script = Callable[[wire.ProcessRequest], Iterable[Item]]


def text_frames(
    pieces: list[str],
    *,
    index: int = 0,
    finish: str = "stop",
    prompt_tokens: int = 5,
    cached_tokens: int = 0,
    logprobs: bool = False,
) -> list[wire.ProcessOutput]:
    """One frame per piece (one token each); the last carries finish_reason and usage."""
    frames = []
    for k, piece in enumerate(pieces):
        lps = [wire.TextLogprob(piece, -0.5 * (k + 1), list(piece.encode()), [(piece, -0.5 * (k + 1), None)])]
        frames.append(wire.ProcessOutput(index, piece, 1, logprobs=lps if logprobs else None))
    usage = wire.Usage(prompt_tokens, len(pieces), cached_tokens)
    frames.append(wire.ProcessOutput(index, "", 0, finish_reason=finish, usage=usage))
    return frames


def default_script(request: wire.ProcessRequest) -> list[Item]:
    """n choices, interleaved: "Hello", " world" per choice."""
    per_choice = [text_frames(["Hello", " world"], index=i) for i in range(request.n)]
    return [f for group in zip(*per_choice, strict=True) for f in group]


class FakeProcessor:
    """A scripted ``ProcessorClient``; records requests and when each stream is closed."""

    def __init__(self) -> None:
        self.script: Script = default_script
        self.requests: list[wire.ProcessRequest] = []
        self.closed: list[str] = []
        self.closed_event = asyncio.Event()

    async def wait_for_requests(self, count: int, timeout: float = 2.0) -> None:
        """Until ``count`` streams have started (the frontend called ``process`` and iterated)."""
        await eventually(
            lambda: len(self.requests),
            until=lambda n: n >= count,
            timeout=timeout,
            what=f"{count} streams to reach the processor",
        )

    async def process(self, request: wire.ProcessRequest) -> AsyncIterator[wire.ProcessOutput]:
        self.requests.append(request)
        try:
            for item in self.script(request):
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, float):
                    await asyncio.sleep(item)
                    continue
                yield item
        finally:
            self.closed.append(request.request_id)
            self.closed_event.set()


class FakeDirectory:
    def __init__(self, cards: dict[str, ModelCard]) -> None:
        self.cards = cards

    def models(self) -> dict[str, ModelCard]:
        return dict(self.cards)

    def set_ready(self, name: str, ready: bool) -> None:
        card = self.cards[name]
        self.cards[name] = ModelCard(
            name=card.name, max_model_len=card.max_model_len, created=card.created, ready=ready
        )


def processing_error(status: int, message: str, param: str | None = None, code: str | None = None):
    return errors.for_status(status, message, param, code)


def parse_sse(body: str) -> list[dict | str]:
    """The ``data:`` payloads of an SSE body: decoded JSON, or the string "[DONE]"."""
    events: list[dict | str] = []
    for block in body.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events
