"""``Processor``: one OpenAI request in, its choices' text frames out.

Flow of ``process``: tokenize (chat template or completion prompt) -> fit
max_tokens to the context -> pick one worker instance -> one worker request per
choice (all ``n`` on the same instance, so they share the prompt's prefix
cache; seed + i per choice) -> per choice, detokenize and match stop strings
(``ChoiceState``) -> merge the choices' frames as they come.

Closing the ``process`` iterator early (client gone) closes every worker
stream, which cancels the engine requests; so does a stop string match.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import msgspec

from .. import wire
from ..errors import ServingError, invalid_request, service_unavailable
from .choice import ChoiceOptions, ChoiceState
from .errors import WorkerUnreachable
from .limits import fit_max_tokens
from .ports import WorkerClient, WorkerDirectory
from .routing import RoutingStrategy
from .tokenization import PromptTokenizer

T = TypeVar("T")
_MERGE_QUEUE_FRAMES = 16  # per choice, between the choice tasks and the caller


class Processor:
    def __init__(
        self,
        tokenizer: str | PromptTokenizer,
        max_model_len: int,
        model: str,
        workers: WorkerClient,
        directory: WorkerDirectory,
        strategy: RoutingStrategy,
        *,
        stall_timeout: float | None = None,
    ) -> None:
        """``tokenizer``: a model directory (or hub id) to load it from, or a loaded one.

        ``stall_timeout``: seconds without a worker frame before the request
        fails with 503; None leaves liveness to the ``WorkerClient``.
        """
        self.tokenizer = (
            tokenizer if isinstance(tokenizer, PromptTokenizer) else PromptTokenizer.load(tokenizer)
        )
        self.max_model_len = max_model_len
        self.model = model
        self._workers = workers
        self._directory = directory
        self._strategy = strategy
        self._stall_timeout = stall_timeout

    def close(self) -> None:
        self.tokenizer.close()

    async def process(self, request: wire.ProcessRequest) -> AsyncIterator[wire.ProcessOutput]:
        """Stream the request's choices; raises ``ServingError`` (before or mid-stream)."""
        if request.n < 1:
            raise invalid_request("n must be at least 1.", param="n")
        prompt_ids = await self.tokenizer.tokenize(request)
        max_tokens = fit_max_tokens(
            request.kind, len(prompt_ids), request.sampling.max_tokens, self.max_model_len
        )
        instances = self._directory.instances()
        if not instances:
            raise service_unavailable(f"No worker is available for model {self.model!r}.")
        instance = await self._strategy.pick(prompt_ids, instances)
        echo_text = self._echo_text(request, prompt_ids) if request.echo else ""
        choices = [
            self._choice(request, index, prompt_ids, max_tokens, instance, echo_text)
            for index in range(request.n)
        ]
        async with contextlib.aclosing(merge(choices)) as frames:
            async for frame in frames:
                yield frame

    async def _choice(
        self,
        request: wire.ProcessRequest,
        index: int,
        prompt_ids: list[int],
        max_tokens: int,
        instance: str,
        echo_text: str,
    ) -> AsyncIterator[wire.ProcessOutput]:
        sampling = request.sampling
        seed = None if sampling.seed is None else sampling.seed + index
        sampling = msgspec.structs.replace(
            sampling, max_tokens=max_tokens, min_tokens=min(sampling.min_tokens, max_tokens), seed=seed
        )
        generate = wire.GenerateRequest(
            request_id=f"{request.request_id}-{index}",
            token_ids=prompt_ids,
            sampling=sampling,
            model=self.model,
        )
        state = ChoiceState(
            self.tokenizer,
            ChoiceOptions(
                index=index,
                prompt_ids=prompt_ids,
                stop=request.stop,
                include_stop_str_in_output=request.include_stop_str_in_output,
                skip_special_tokens=request.skip_special_tokens,
                min_tokens=sampling.min_tokens,
                logprobs=sampling.logprobs is not None,
                echo_text=echo_text,
            ),
        )
        stream, output, instance = await self._open(generate, instance)
        try:
            while True:
                frame = state.on_output(output)
                if frame is not None:
                    yield frame
                if state.finished:
                    break
                output = await self._next_output(stream, instance)
        finally:
            await _close(stream)  # after a stop string match: cancels the engine request

    async def _open(
        self, request: wire.GenerateRequest, instance: str
    ) -> tuple[AsyncIterator[wire.GenerateOutput], wire.GenerateOutput, str]:
        """Start the worker stream and read its first frame.

        A worker that died moments ago stays in discovery until its lease
        expires; a request sent to it is refused before anything is generated,
        so it is resent to another live worker instead of failing.
        """
        tried: set[str] = set()
        while True:
            stream = self._workers.generate(request, instance)
            try:
                return stream, await self._next_output(stream, instance), instance
            except WorkerUnreachable:
                await _close(stream)
                tried.add(instance)
                candidates = [i for i in self._directory.instances() if i not in tried]
                if not candidates:
                    raise service_unavailable(
                        f"No live worker is available for model {self.model!r}."
                    ) from None
                instance = await self._strategy.pick(request.token_ids, candidates)

    async def _next_output(
        self, stream: AsyncIterator[wire.GenerateOutput], instance: str
    ) -> wire.GenerateOutput:
        """The worker's next frame; every failure raises a ``ServingError`` (a worker's own unchanged)."""
        deadline = None
        try:
            if self._stall_timeout is None:  # no timer per frame when there is no limit
                return await anext(stream)
            async with asyncio.timeout(self._stall_timeout) as deadline:
                return await anext(stream)
        except StopAsyncIteration:
            raise service_unavailable(f"Worker {instance} ended the stream without finishing it.") from None
        except ServingError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                raise service_unavailable(
                    f"Worker {instance} sent nothing for {self._stall_timeout} s; request abandoned."
                ) from exc
            raise service_unavailable(f"Worker {instance} was lost: {exc!r}") from exc

    def _echo_text(self, request: wire.ProcessRequest, prompt_ids: list[int]) -> str:
        if request.kind == "completion":
            if isinstance(request.prompt, str):
                return request.prompt
            return self.tokenizer.decode(prompt_ids, skip_special_tokens=request.skip_special_tokens)
        # chat (vLLM): echo continues the last message when it is the one being answered
        last = (request.messages or [None])[-1]
        if last is not None and (last.role == "assistant" or not request.add_generation_prompt):
            return last.content or ""
        return ""


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Interleave several async iterators' items as they come.

    The first exception from any stream is raised at once and the others are
    closed; closing the merged iterator closes them all.
    """
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(_MERGE_QUEUE_FRAMES * len(streams))
    done = object()

    async def pump(stream: AsyncIterator[T]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    await queue.put((item, None))
            await queue.put((done, None))
        except Exception as exc:
            await queue.put((None, exc))

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is done:
                remaining -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
