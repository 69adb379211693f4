"""Processor frames -> OpenAI response bodies (single JSON documents or SSE events).

Each builder is an async generator of bytes consumed by ``sse.DeferredResponse``:
it raises if the processor fails before anything was produced (so the client
gets a proper HTTP error) and reports later failures as an SSE error event.
Frames of different choices may be interleaved; they are told apart by
``offset + frame.index`` (see ``fanout``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import msgspec
from msgspec import UNSET

from inference_graph import wire

from . import openai_types as oa
from .convert import Prepared
from .errors import error_bytes, info_of
from .fanout import frames
from .metrics import RequestObserver
from .ports import ProcessorClient
from .sse import DONE, sse_event

_encode = msgspec.json.Encoder().encode


class _Choice:
    """What is accumulated for one choice."""

    __slots__ = ("finish_reason", "logprobs", "num_tokens", "stop_reason", "text", "text_len", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.text_len = 0
        self.logprobs: list[wire.TextLogprob] = []
        self.num_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.usage: wire.Usage | None = None


class _Tally:
    """Per-choice state and usage. Prompt tokens count once per prompt, not per choice."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.choices: dict[int, _Choice] = {}

    def add(self, index: int, frame: wire.ProcessOutput, keep_text: bool) -> _Choice:
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = _Choice()
        if keep_text:
            choice.text.append(frame.text)
            if frame.logprobs:
                choice.logprobs.extend(frame.logprobs)
        choice.text_len += len(frame.text)
        choice.num_tokens += frame.num_tokens
        if frame.finish_reason is not None:
            choice.finish_reason = frame.finish_reason
            choice.stop_reason = frame.stop_reason
        if frame.usage is not None:
            choice.usage = frame.usage
        return choice

    def usage(self, observer: RequestObserver) -> oa.UsageInfo:
        prompts: dict[int, tuple[int, int]] = {}
        completion = migrations = 0
        for index, choice in self.choices.items():
            if choice.usage is None:
                completion += choice.num_tokens
                continue
            completion += choice.usage.completion_tokens
            migrations += choice.usage.migrations
            prompts[index // self.n] = (choice.usage.prompt_tokens, choice.usage.cached_tokens)
        prompt = sum(p for p, _ in prompts.values())
        cached = sum(c for _, c in prompts.values())
        observer.usage(prompt, completion, cached, migrations)
        return oa.UsageInfo(prompt, completion, prompt + completion, oa.PromptTokensDetails(cached))


def _chat_logprobs(logprobs: list[wire.TextLogprob]) -> oa.ChatLogprobs:
    return oa.ChatLogprobs(
        [
            oa.ChatTokenLogprob(
                lp.token, lp.logprob, lp.bytes, [oa.TopLogprob(t, v, b) for t, v, b in lp.top]
            )
            for lp in logprobs
        ]
    )


def _completion_logprobs(logprobs: list[wire.TextLogprob], offset: int) -> oa.CompletionLogprobs:
    out = oa.CompletionLogprobs([], [], [], [])
    for lp in logprobs:
        top = {t: v for t, v, _ in lp.top}
        top.setdefault(lp.token, lp.logprob)
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


def _first_offset(text_before: int, frame_text: str, logprobs: list[wire.TextLogprob]) -> int:
    # The frame's tokens end its text (an echoed prompt, if any, comes first).
    return max(text_before, text_before + len(frame_text) - sum(len(lp.token) for lp in logprobs))


# ---------------------------------------------------------------- single JSON documents


async def chat_completion(
    prep: Prepared, processor: ProcessorClient, observer: RequestObserver
) -> AsyncGenerator[bytes, None]:
    tally = _Tally(prep.n)
    stream = frames(processor, prep.requests, prep.n)
    try:
        async for offset, frame in stream:
            index = offset + frame.index
            observer.frame(index, frame.num_tokens, bool(frame.text))
            tally.add(index, frame, keep_text=True)
    finally:
        await stream.aclose()
    choices = [
        oa.ChatChoice(
            index=index,
            message=oa.AssistantMessage("".join(c.text)),
            logprobs=_chat_logprobs(c.logprobs) if prep.logprobs else None,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
        )
        for index, c in sorted(tally.choices.items())
    ]
    usage = tally.usage(observer)
    yield _encode(
        oa.ChatCompletion(id=prep.id, created=prep.created, model=prep.model, choices=choices, usage=usage)
    )


async def text_completion(
    prep: Prepared, processor: ProcessorClient, observer: RequestObserver
) -> AsyncGenerator[bytes, None]:
    tally = _Tally(prep.n)
    stream = frames(processor, prep.requests, prep.n)
    try:
        async for offset, frame in stream:
            index = offset + frame.index
            observer.frame(index, frame.num_tokens, bool(frame.text))
            tally.add(index, frame, keep_text=True)
    finally:
        await stream.aclose()
    choices = []
    for index, c in sorted(tally.choices.items()):
        text = "".join(c.text)
        logprobs = None
        if prep.logprobs:
            logprobs = _completion_logprobs(c.logprobs, _first_offset(0, text, c.logprobs))
        choices.append(oa.CompletionChoice(index=index, text=text, logprobs=logprobs,
                                           finish_reason=c.finish_reason, stop_reason=c.stop_reason))  # fmt: skip
    usage = tally.usage(observer)
    yield _encode(
        oa.Completion(id=prep.id, created=prep.created, model=prep.model, choices=choices, usage=usage)
    )


# ---------------------------------------------------------------- SSE streams


async def chat_events(
    prep: Prepared, processor: ProcessorClient, observer: RequestObserver
) -> AsyncGenerator[bytes, None]:
    usage_field: msgspec.UnsetType | None = None if prep.include_usage else UNSET

    def event(choice: oa.ChatChunkChoice) -> bytes:
        chunk = oa.ChatCompletionChunk(
            id=prep.id, created=prep.created, model=prep.model, choices=[choice], usage=usage_field
        )
        return b"data: " + _encode(chunk) + b"\n\n"

    tally = _Tally(prep.n)
    started = False
    stream = frames(processor, prep.requests, prep.n)
    try:
        async for offset, frame in stream:
            index = offset + frame.index
            observer.frame(index, frame.num_tokens, bool(frame.text))
            out = []
            if index not in tally.choices:
                out.append(
                    event(oa.ChatChunkChoice(index=index, delta=oa.Delta(role="assistant", content="")))
                )
            tally.add(index, frame, keep_text=False)
            if frame.text or frame.logprobs:
                logprobs = _chat_logprobs(frame.logprobs or []) if prep.logprobs else None
                out.append(event(oa.ChatChunkChoice(index=index, delta=oa.Delta(content=frame.text),
                                                    logprobs=logprobs)))  # fmt: skip
            if frame.finish_reason is not None:
                out.append(event(oa.ChatChunkChoice(index=index, delta=oa.Delta(),
                                                    finish_reason=frame.finish_reason,
                                                    stop_reason=frame.stop_reason)))  # fmt: skip
            if out:
                started = True
                yield b"".join(out)
        usage = tally.usage(observer)
        if prep.include_usage:
            last = oa.ChatCompletionChunk(id=prep.id, created=prep.created, model=prep.model, choices=[],
                                          usage=usage)  # fmt: skip
            yield sse_event(_encode(last)) + DONE
        else:
            yield DONE
    except Exception as exc:
        if not started:
            raise
        info = info_of(exc)
        observer.status = info.status
        yield sse_event(error_bytes(info))
    finally:
        await stream.aclose()


async def completion_events(
    prep: Prepared, processor: ProcessorClient, observer: RequestObserver
) -> AsyncGenerator[bytes, None]:
    usage_field: msgspec.UnsetType | None = None if prep.include_usage else UNSET
    tally = _Tally(prep.n)
    started = False
    stream = frames(processor, prep.requests, prep.n)
    try:
        async for offset, frame in stream:
            index = offset + frame.index
            observer.frame(index, frame.num_tokens, bool(frame.text))
            before = tally.choices[index].text_len if index in tally.choices else 0
            tally.add(index, frame, keep_text=False)
            logprobs = None
            if prep.logprobs:
                lps = frame.logprobs or []
                logprobs = _completion_logprobs(lps, _first_offset(before, frame.text, lps))
            final = frame.finish_reason is not None
            if not (frame.text or final or frame.logprobs):
                continue
            choice = oa.CompletionChoice(
                index=index,
                text=frame.text,
                logprobs=logprobs,
                finish_reason=frame.finish_reason,
                stop_reason=frame.stop_reason if final else UNSET,
            )
            chunk = oa.Completion(
                id=prep.id, created=prep.created, model=prep.model, choices=[choice], usage=usage_field
            )
            started = True
            yield b"data: " + _encode(chunk) + b"\n\n"
        usage = tally.usage(observer)
        if prep.include_usage:
            last = oa.Completion(id=prep.id, created=prep.created, model=prep.model, choices=[], usage=usage)
            yield sse_event(_encode(last)) + DONE
        else:
            yield DONE
    except Exception as exc:
        if not started:
            raise
        info = info_of(exc)
        observer.status = info.status
        yield sse_event(error_bytes(info))
    finally:
        await stream.aclose()
