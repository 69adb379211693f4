"""The processor's ports wired to the runtime: workers over NATS, their list from etcd."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

import msgspec

from .. import wire
from ..runtime.discovery import InstanceWatch
from ..runtime.errors import InstanceLostError, NoRespondersError, RequestTimeoutError, RuntimeErrorBase
from ..runtime.request_plane import EndpointClient
from .errors import WorkerUnreachable
from .routing import RouterUnavailable

GENERATE_ENDPOINT = "generate"
DECIDE_ENDPOINT = (
    "decide"  # the router's (roles.router.service.DECIDE_ENDPOINT; roles don't import each other)
)


class NatsWorkerClient:
    """``WorkerClient`` over the request plane: directed calls to one worker instance.

    Worker-reported errors arrive as ``RemoteError`` (it carries ``info``); a worker
    whose lease expires mid-stream fails the stream with ``InstanceLostError``
    because ``EndpointClient`` listens to discovery. A request no worker accepted
    or a worker lost before its first frame, raises ``WorkerUnreachable`` so the
    processor can send it elsewhere.
    """

    def __init__(self, client: EndpointClient, *, ack_timeout: float = 5.0):
        self._client = client
        self._ack_timeout = ack_timeout
        self._encode = wire.encoder.encode
        self._decode = wire.decoder(wire.GenerateOutput).decode

    async def generate(
        self, request: wire.GenerateRequest, instance_id: str
    ) -> AsyncGenerator[wire.GenerateOutput, None]:
        payload = self._encode(request)
        stream = self._client.stream_batches(
            GENERATE_ENDPOINT, payload, instance_id, ack_timeout=self._ack_timeout
        )
        decode = self._decode
        produced = False
        try:
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    produced = True
                    # Frames that queued up while the processor was busy go on as one output
                    # (as the engine itself merges the tokens of steps its consumer missed).
                    yield decode(batch[0]) if len(batch) == 1 else merge_outputs([decode(p) for p in batch])
        except (NoRespondersError, InstanceLostError, RequestTimeoutError) as exc:
            # Refused, never accepted, or lost before the first token: nothing reached
            # the client, so another worker may serve the request from the start.
            if produced or (isinstance(exc, RequestTimeoutError) and exc.phase != "ack"):
                raise
            raise WorkerUnreachable(instance_id) from exc


def merge_outputs(outputs: list[wire.GenerateOutput]) -> wire.GenerateOutput:
    """Consecutive worker outputs of one request as one: tokens (and logprobs) in order,
    the last one's finish and prompt count, the largest cached count."""
    last = outputs[-1]
    token_ids: list[int] = []
    logprobs: list[wire.TokenLogprob] | None = None
    for out in outputs:
        token_ids += out.token_ids
        if out.logprobs is not None:
            logprobs = out.logprobs if logprobs is None else logprobs + out.logprobs
    return wire.GenerateOutput(
        token_ids=token_ids,
        finish_reason=last.finish_reason,
        num_prompt_tokens=last.num_prompt_tokens,
        num_cached_tokens=max(out.num_cached_tokens for out in outputs),  # as ChoiceState takes it
        logprobs=logprobs,
        stop_token_id=last.stop_token_id,
    )


class DiscoveryWorkerDirectory:
    """``WorkerDirectory``: live workers of one component serving ``model``, kept current by a watch."""

    def __init__(self, watch: InstanceWatch, model: str):
        self._ids: list[str] = []
        self._model = model
        watch.add_listener(lambda _event, _info: self._rebuild(watch.instances))
        self._rebuild(watch.instances)

    def instances(self) -> list[str]:
        return self._ids

    def _rebuild(self, instances: dict[str, wire.InstanceInfo]) -> None:
        # A draining worker finishes its streams but takes nothing new.
        self._ids = sorted(
            i for i, info in instances.items() if info.model == self._model and not info.draining
        )


class NatsRouterClient:
    """``KvRouterStrategy``'s ``decide`` over the request plane: one ``decide`` call to any router."""

    def __init__(self, client: EndpointClient, *, timeout: float = 1.0):
        self._client = client
        self._timeout = timeout
        self._encode = wire.encoder.encode
        self._decode = wire.decoder(wire.RouteDecision).decode

    async def __call__(self, token_ids: list[int], instances: Sequence[str]) -> str:
        payload = self._encode(wire.RouteRequest(list(token_ids), list(instances)))
        decision: wire.RouteDecision | None = None
        try:
            async with asyncio.timeout(self._timeout):
                frames = self._client.stream(DECIDE_ENDPOINT, payload, ack_timeout=self._timeout)
                async with contextlib.aclosing(frames):
                    async for frame in frames:  # one DATA frame, then END
                        decision = decision or self._decode(frame)
        except (RuntimeErrorBase, TimeoutError, msgspec.DecodeError) as exc:
            raise RouterUnavailable(str(exc) or type(exc).__name__) from exc
        if decision is None:
            raise RouterUnavailable("router ended the stream without a decision")
        return decision.worker
