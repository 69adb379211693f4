"""``Processor``: one OpenAI request in, its choices' text frames out.

Flow of ``process``: tokenize (chat template or completion prompt) -> fit
max_tokens to the context -> pick one worker instance -> one worker request per
choice (all ``n`` on the same instance, so they share the prompt's prefix
cache; seed + i per choice) -> per choice, detokenize and match stop strings
(``ChoiceState``) -> merge the choices' frames as they come.

Closing the ``process`` iterator early (client gone) closes every worker
stream, which cancels the engine requests; so does a stop string match.

Migration: a choice whose worker fails with a retryable server-side error
(``ServingError.retryable`` and status >= 500: the worker died, its lease
expired, the transport was cut, it stalled, it shut down) before finishing is
sent again, routed anew among the other live workers, as the prompt plus every
token the client already has, with ``max_tokens`` (and ``min_tokens``) reduced
by that count. The ``ChoiceState`` (detokenizer, stop strings, usage) carries
on, so the client's stream continues with no token missing or repeated; a
greedy choice continues exactly as it would have. At most ``migration_limit``
times per choice (``spec.routing.migrationLimit``; 0: never). docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, TypeVar

import msgspec

from .. import wire
from ..errors import ServingError, invalid_request, service_unavailable
from ..runtime.errors import FramesLostError, RequestTimeoutError
from .choice import ChoiceOptions, ChoiceState
from .errors import WorkerUnreachable
from .limits import fit_max_tokens
from .ports import WorkerClient, WorkerDirectory
from .routing import RoutingStrategy
from .tokenization import PromptTokenizer

T = TypeVar("T")
log = logging.getLogger(__name__)
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
        migration_limit: int = 0,
    ) -> None:
        """``tokenizer``: a model directory (or hub id) to load it from, or a loaded one.

        ``stall_timeout``: seconds without a worker frame before the request
        fails with 503 (or migrates); None leaves liveness to the ``WorkerClient``.
        ``migration_limit``: how many times one choice may move to another worker
        after a retryable worker failure (``spec.routing.migrationLimit``); 0: never.
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
        self.migration_limit = migration_limit
        self.migrations = 0  # choices re-sent to another worker, since start

    def close(self) -> None:
        self.tokenizer.close()

    async def process(self, request: wire.ProcessRequest) -> AsyncGenerator[wire.ProcessOutput, None]:
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
    ) -> AsyncGenerator[wire.ProcessOutput, None]:
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
        prompt_len = len(prompt_ids)
        generated: list[int] = []  # every token id the choice's state consumed
        excluded: set[str] = set()  # workers that failed this choice
        attempt = generate
        while True:
            stream: AsyncIterator[wire.GenerateOutput] | None = None
            try:
                stream, output, instance = await self._open(attempt, instance, excluded)
                while True:
                    if state.migrations and output.num_cached_tokens > prompt_len:
                        # cached tokens of a migrated prompt include generated ones; usage counts the prompt's
                        output = msgspec.structs.replace(output, num_cached_tokens=prompt_len)
                    generated += output.token_ids
                    frame = state.on_output(output)
                    if frame is not None:
                        yield frame
                    if state.finished:
                        return
                    output = await self._next_output(stream, instance)
            except ServingError as exc:
                excluded.add(instance)
                next_instance = await self._migration_target(
                    exc, state, generate.request_id, prompt_ids + generated, excluded, instance
                )
                if next_instance is None:
                    raise
                if stream is not None:
                    await _close(stream)
                    stream = None
                if len(generated) >= max_tokens:  # every token arrived, only the finish was lost
                    frame = state.on_output(wire.GenerateOutput(token_ids=[], finish_reason="length"))
                    if frame is not None:
                        yield frame
                    return
                state.migrations += 1
                self.migrations += 1
                log.warning(
                    "migrating request %s from worker %s to %s after %d generated tokens "
                    "(migration %d of at most %d): %s",
                    generate.request_id, instance, next_instance, len(generated),
                    state.migrations, self.migration_limit, exc,
                )  # fmt: skip
                attempt = _continuation(generate, prompt_ids, generated, state.migrations)
                instance = next_instance
            finally:
                if stream is not None:
                    await _close(stream)  # after a stop string match: cancels the engine request

    async def _migration_target(
        self,
        exc: ServingError,
        state: ChoiceState,
        request_id: str,
        token_ids: list[int],
        excluded: set[str],
        failed: str,
    ) -> str | None:
        """The worker to continue the choice on after ``exc``, or None when it must fail.

        Only a retryable server-side failure migrates (a 4xx is the request's own
        fault, and would fail again), only ``migration_limit`` times, and only to a
        live worker that has not failed this choice; routing sees the continuation
        (prompt plus generated tokens) as a new request. With no such worker, the
        worker that failed (``failed``) takes it again if the transport failed rather
        than the worker (frames lost, or silence past the liveness deadline, e.g. across
        a NATS restart) and it is still registered.
        """
        if not exc.retryable or exc.status < 500:
            return None
        if state.migrations >= self.migration_limit:
            if self.migration_limit:
                log.warning(
                    "request %s failed after %d migrations (the limit): %s",
                    request_id, state.migrations, exc,
                )  # fmt: skip
            return None
        live = self._directory.instances()
        candidates = [i for i in live if i not in excluded]
        if not candidates and isinstance(exc, FramesLostError | RequestTimeoutError):
            candidates = [i for i in live if i == failed]
        if not candidates:
            log.warning("request %s cannot migrate, no other live worker: %s", request_id, exc)
            return None
        return await self._strategy.pick(token_ids, candidates)

    async def _open(
        self, request: wire.GenerateRequest, instance: str, tried: set[str]
    ) -> tuple[AsyncIterator[wire.GenerateOutput], wire.GenerateOutput, str]:
        """Start the worker stream and read its first frame.

        A worker that died moments ago stays in discovery until its lease
        expires; a request sent to it is refused before anything is generated,
        so it is resent to another live worker (not in ``tried``, where refusals
        are added) instead of failing. Not a migration: nothing was generated.
        """
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
            except ServingError:
                tried.add(instance)  # failed otherwise before its first frame: not a candidate again
                await _close(stream)
                raise

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
        last = request.messages[-1] if request.messages else None
        if last is not None and (last.role == "assistant" or not request.add_generation_prompt):
            return last.content or ""
        return ""


async def merge(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[T, None]:
    """Interleave several async iterators' items as they come.

    The first exception from any stream is raised at once and the others are
    closed; closing the merged iterator closes them all.
    """
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(_MERGE_QUEUE_FRAMES * len(streams))
    done = object()

    async def pump(stream: AsyncGenerator[T, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
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


def _continuation(
    first: wire.GenerateRequest, prompt_ids: list[int], generated: list[int], migration: int
) -> wire.GenerateRequest:
    """``first`` (the choice's original worker request) continued after ``generated`` tokens:
    those tokens join the prompt and the token budgets shrink by as many."""
    sampling = first.sampling
    done = len(generated)
    return msgspec.structs.replace(
        first,
        request_id=f"{first.request_id}-m{migration}",  # an engine may still hold the old id
        token_ids=prompt_ids + generated,
        sampling=msgspec.structs.replace(
            sampling,
            max_tokens=sampling.max_tokens - done,
            min_tokens=max(0, sampling.min_tokens - done),
        ),
    )
