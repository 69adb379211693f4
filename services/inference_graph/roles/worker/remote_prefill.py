"""The decode worker's side of disaggregated serving: prefill here or on a prefill worker, then decode.

Per request (``DisaggregatedDecode.generate``):

1. Decide. Remote only if a prefill worker is registered, the prompt's
   *uncached* tokens (prompt minus the prefix this worker's engine holds, from
   its own KV events: the same number the KV router's expected hit estimates
   for this worker) exceed ``conditional.maxLocalPrefillLength``, and the
   prefill queue holds fewer than ``conditional.maxPrefillQueueSize`` requests.
2. Remote: put a ``PrefillRequest`` on the queue and wait, at most
   ``queue.remoteTimeoutSeconds``, for a prefill worker's ``PrefillResult`` on
   this instance's ``prefill_done`` subject. No result in time (prefill workers
   dead, slow, or the request exhausted its deliveries) or a failed prefill:
   prefill locally instead. The request is served once either way.
3. Decode with the result's ``kv_transfer_params`` (``Phase.DECODE``: the
   engine pulls the KV). The first output means the engine holds the KV: only
   then the prefill worker hears ``HELD`` and acks the queue message. A transfer
   that fails is an error to the client (``kv_transfer_error``), counted in
   ``kv_transfer_failures``; never a silent re-prefill of a request whose
   transfer was broken by misconfiguration.

A ``PrefillResult`` nobody waits for (the request went local, was cancelled,
or is a redelivery of one already served) is answered ``UNKNOWN`` at once, so
its prefill worker acks it and moves on: no request completes twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ... import wire
from ...core.kv_index import KvIndex
from ...core.spec import DisaggregationSpec
from ...engines.base import Engine
from ...engines.kv_transfer import KvTransferError
from ...runtime.names import instance_subject
from ...runtime.prefill_queue import PrefillQueue

log = logging.getLogger(__name__)

PREFILL_DONE_ENDPOINT = "prefill_done"


def prefill_done_subject(namespace: str, decode_instance_id: str) -> str:
    """Where prefill workers report to the decode worker that queued a request."""
    return instance_subject(namespace, "decode", PREFILL_DONE_ENDPOINT, decode_instance_id)


@dataclass
class DisaggCounters:
    local_prefills: int = 0
    remote_prefills: int = 0
    remote_fallbacks: int = 0  # queued, but no usable result in time: prefilled locally
    kv_transfer_failures: int = 0


class LocalPrefixCache:
    """The prefix this worker's engine holds, rebuilt from the KV events it publishes."""

    def __init__(self, instance_id: str, block_size: int):
        self._instance_id = instance_id
        self._block_size = block_size
        self._index = KvIndex(block_size)

    def record(self, batch: wire.KvEventBatch) -> None:
        self._index.apply(batch)

    def hit_tokens(self, token_ids: list[int]) -> int:
        blocks = self._index.overlap(self._index.request_hashes(token_ids)).get(self._instance_id, 0)
        return min(blocks * self._block_size, max(len(token_ids) - 1, 0))  # vLLM computes >= 1 token


class DisaggregatedDecode:
    """``generate`` with conditional remote prefill; stands where the engine stands for the handler."""

    def __init__(
        self,
        nc: NATS,
        namespace: str,
        instance_id: str,
        engine: Engine,
        queue: PrefillQueue,
        spec: DisaggregationSpec,
        prefill_instances: Callable[[], dict[str, wire.InstanceInfo]],
        prefix: LocalPrefixCache,
    ):
        self._nc = nc
        self._namespace = namespace
        self.instance_id = instance_id
        self.engine = engine
        self.queue = queue
        self._spec = spec
        self._prefill_instances = prefill_instances
        self.prefix = prefix
        self.counters = DisaggCounters()
        self._pending: dict[str, asyncio.Future] = {}
        self._sub: Subscription | None = None
        self._decode_result = wire.decoder(wire.PrefillResult).decode
        self._encode = wire.encoder.encode

    async def start(self) -> None:
        subject = prefill_done_subject(self._namespace, self.instance_id)
        self._sub = await self._nc.subscribe(subject, cb=self._on_result)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    # ------------------------------------------------------------ per request

    async def generate(self, request: wire.GenerateRequest) -> AsyncGenerator[wire.GenerateOutput, None]:
        arrival = None
        if await self.prefill_remotely(request):
            arrival = await self._remote_prefill(request)
        if arrival is None:
            self.counters.local_prefills += 1
            async with contextlib.aclosing(self.engine.generate(request)) as outputs:
                async for output in outputs:
                    yield output
            return
        result, reply = arrival
        self.counters.remote_prefills += 1
        async with contextlib.aclosing(self._decode_remote(request, result, reply)) as outputs:
            async for output in outputs:
                yield output

    async def prefill_remotely(self, request: wire.GenerateRequest) -> bool:
        """The conditional-disaggregation rule (module docstring, step 1)."""
        if not self._prefill_instances():
            return False
        uncached = len(request.token_ids) - self.prefix.hit_tokens(request.token_ids)
        if uncached <= self._spec.conditional.max_local_prefill_length:
            return False
        try:
            depth = await self.queue.depth()
        except Exception as exc:  # JetStream unreachable: serve locally rather than fail
            log.warning("prefill queue depth unavailable (%r); prefilling locally", exc)
            return False
        return depth < self._spec.conditional.max_prefill_queue_size

    async def _remote_prefill(self, request: wire.GenerateRequest) -> tuple[wire.PrefillResult, str] | None:
        """Queue the prefill and wait for its result; None: prefill locally (counted, logged)."""
        timeout = self._spec.queue.remote_timeout_seconds
        future = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            await self.queue.enqueue(
                wire.PrefillRequest(
                    request_id=request.request_id,
                    token_ids=request.token_ids,
                    sampling=request.sampling,
                    decode_instance_id=self.instance_id,
                    deadline=time.time() + timeout,
                    model=request.model,
                )
            )
            async with asyncio.timeout(timeout):
                result, reply = await future
        except (TimeoutError, nats.errors.Error) as exc:
            self.counters.remote_fallbacks += 1
            log.warning("remote prefill of %s: %r; prefilling locally", request.request_id, exc)
            return None
        finally:
            self._pending.pop(request.request_id, None)
        if result.error is not None:
            self.counters.remote_fallbacks += 1
            log.warning(
                "prefill worker failed %s (%s); prefilling locally", request.request_id, result.error.message
            )
            await self._receipt(reply, wire.ReceiptStatus.UNKNOWN)
            return None
        return result, reply

    async def _decode_remote(
        self, request: wire.GenerateRequest, result: wire.PrefillResult, reply: str
    ) -> AsyncGenerator[wire.GenerateOutput, None]:
        status = wire.ReceiptStatus.FAILED  # unless the engine shows it holds the KV
        try:
            self._check_source(result)
            decode = msgspec.structs.replace(
                request, phase=wire.Phase.DECODE, kv_transfer_params=result.kv_transfer_params
            )
            async with contextlib.aclosing(self.engine.generate(decode)) as outputs:
                async for output in outputs:
                    if status is not wire.ReceiptStatus.HELD:
                        status = wire.ReceiptStatus.HELD
                        await self._receipt(reply, status)
                    yield output
        except KvTransferError:
            self.counters.kv_transfer_failures += 1
            log.error("KV transfer for %s from %s failed", request.request_id, result.prefill_instance_id)
            raise
        finally:
            if status is not wire.ReceiptStatus.HELD:
                await self._receipt(reply, status)

    def _check_source(self, result: wire.PrefillResult) -> None:
        """The KV must come from where its prefill worker said in discovery it can be reached."""
        params = result.kv_transfer_params or {}
        info = self._prefill_instances().get(result.prefill_instance_id)
        if info is None or not info.kv_side_channel_port or "remote_port" not in params:
            return
        advertised = (info.kv_side_channel_host, info.kv_side_channel_port)
        named = (params.get("remote_host"), params.get("remote_port"))
        if named != advertised:
            raise KvTransferError(
                f"prefill worker {result.prefill_instance_id} registered its KV side channel at "
                f"{advertised[0]}:{advertised[1]} but its engine named {named[0]}:{named[1]} "
                "(check VLLM_NIXL_SIDE_CHANNEL_HOST/PORT)"
            )

    # ------------------------------------------------------------ messages from prefill workers

    async def _on_result(self, msg: Msg) -> None:
        try:
            result = self._decode_result(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable prefill result dropped")
            return
        future = self._pending.get(result.request_id)
        if future is None or future.done():
            await self._receipt(msg.reply, wire.ReceiptStatus.UNKNOWN)
            return
        future.set_result((result, msg.reply))

    async def _receipt(self, reply: str, status: wire.ReceiptStatus) -> None:
        if reply:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(reply, self._encode(wire.PrefillReceipt(status=status)))
