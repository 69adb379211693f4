"""The frontend's ports wired to the runtime: processors over NATS, models from etcd."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

import msgspec

from ... import wire
from ...core.spec import Role
from ...errors import ServingError, service_unavailable
from ...runtime.discovery import InstanceWatch
from ...runtime.errors import FramesLostError, InstanceLostError, NoRespondersError, RequestTimeoutError
from ...runtime.request_plane import EndpointClient
from .ports import ModelCard

PROCESS_ENDPOINT = "process"
log = logging.getLogger(__name__)


class NatsProcessorClient:
    """``ProcessorClient`` over the request plane, load-balanced across processors."""

    def __init__(self, client: EndpointClient, *, ack_timeout: float = 5.0):
        self._client = client
        self._ack_timeout = ack_timeout
        self._encode = wire.encoder.encode
        self._decode = wire.decoder(wire.ProcessOutput).decode

    async def process(self, request: wire.ProcessRequest) -> AsyncGenerator[wire.ProcessOutput, None]:
        """The processor's outputs. A stream whose frames were lost in transport (a NATS restart)
        or that went silent past the liveness deadline before its first output is sent again,
        once: nothing reached the client yet, and the first copy is cancelled. Later, the
        processor holds the request's state, so the error ends the request."""
        payload = self._encode(request)
        for attempt in range(2):
            produced = False
            try:
                async for output in self._process(payload):
                    produced = True
                    yield output
                return
            except (FramesLostError, RequestTimeoutError) as exc:
                transport = isinstance(exc, FramesLostError) or exc.phase == "idle"
                if produced or attempt or not transport:
                    raise
                log.warning("request %s sent again before its first output: %s", request.request_id, exc)

    async def _process(self, payload: bytes) -> AsyncGenerator[wire.ProcessOutput, None]:
        stream = self._client.stream_batches(PROCESS_ENDPOINT, payload, ack_timeout=self._ack_timeout)
        decode = self._decode
        try:
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    if len(batch) == 1:
                        yield decode(batch[0])
                    else:  # frames that queued up while we were busy: one SSE event per choice
                        for output in merge_outputs([decode(p) for p in batch]):
                            yield output
        except NoRespondersError:
            raise _unavailable("No processor is running for this graph.") from None
        except InstanceLostError as exc:
            raise _unavailable(f"The processor serving this request ({exc.instance_id}) stopped.") from None
        except RequestTimeoutError as exc:
            if exc.phase == "idle":
                raise  # process() may send it again; a RequestTimeoutError is a 504 as it is
            raise service_unavailable(f"The processor did not answer: {exc}", status=504) from None


def merge_outputs(outputs: list[wire.ProcessOutput]) -> list[wire.ProcessOutput]:
    """Consecutive outputs of the same unfinished choice merged into one (text, token count
    and logprobs in order; the last one's finish and usage); order otherwise kept."""
    merged: list[wire.ProcessOutput] = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (
            prev is None
            or prev.index != out.index
            or prev.finish_reason is not None
            or prev.usage is not None
        ):
            merged.append(out)
            continue
        logprobs = prev.logprobs
        if out.logprobs is not None:
            logprobs = out.logprobs if logprobs is None else logprobs + out.logprobs
        merged[-1] = wire.ProcessOutput(
            index=out.index,
            text=prev.text + out.text,
            num_tokens=prev.num_tokens + out.num_tokens,
            finish_reason=out.finish_reason,
            stop_reason=out.stop_reason,
            logprobs=logprobs,
            usage=out.usage,
        )
    return merged


def _unavailable(message: str) -> ServingError:
    return service_unavailable(message)


class DiscoveryModelDirectory:
    """``ModelDirectory`` from the live instances of the graph.

    A model is listed while a processor serves it (or always, for the model of
    a frontend that hosts processing itself: ``local``), and ready while at
    least one decode worker for it is registered too. The cards are rebuilt on
    each discovery change, so ``models()`` is a dictionary read.
    """

    def __init__(self, watch: InstanceWatch, local: ModelCard | None = None):
        self._cards: dict[str, ModelCard] = {}
        self._local = local
        watch.add_listener(lambda _event, _info: self._rebuild(watch.instances))
        self._rebuild(watch.instances)

    def models(self) -> dict[str, ModelCard]:
        return self._cards

    def _rebuild(self, instances: dict[str, wire.InstanceInfo]) -> None:
        served = {i.model for i in instances.values() if i.component == Role.DECODE.value}
        cards = {}
        if self._local is not None:
            cards[self._local.name] = msgspec.structs.replace(self._local, ready=self._local.name in served)
        for info in sorted(instances.values(), key=lambda i: i.started_at):
            if info.component == Role.PROCESSOR.value and info.model not in cards:
                cards[info.model] = ModelCard(
                    name=info.model,
                    max_model_len=info.max_model_len,
                    created=int(info.started_at),
                    ready=info.model in served,
                )
        self._cards = cards
