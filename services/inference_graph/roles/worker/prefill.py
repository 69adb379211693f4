"""The prefill worker: pull from the prefill queue, prefill, hand the KV to the decode worker.

Per pulled request (``PrefillWorker._serve``), while in-progress acks keep it
ours: skip it if its decode worker stopped waiting (deadline passed); else run
the engine's ``Phase.PREFILL`` (one token, KV kept for the decode side), send
the ``PrefillResult`` to the decode worker that queued it and wait for its
receipt: ``HELD`` once that worker's engine has pulled the KV, ``UNKNOWN`` if
nobody waits any more, ``FAILED`` if the transfer failed. Any receipt settles
the request, so the message is acked then, and only then: a prefill worker that
dies before that point leaves the message unacked and JetStream redelivers it
to another after ``ackWaitSeconds``.

Pulling is the load balancing: a worker pulls only while it has a free slot
(``IG_PREFILL_CONCURRENCY``, default 2: one prefill computing while the next
one's result waits for its decode worker). Graceful stop: leave discovery (the
caller does), stop pulling, finish what was pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from ... import wire
from ...engines.base import Engine
from ...engines.kv_transfer import KvTransferError
from ...errors import ServingError
from ...runtime.prefill_queue import Delivery, PrefillQueue
from .remote_prefill import prefill_done_subject

log = logging.getLogger(__name__)

PULL_WAIT = 1.0  # seconds one long poll waits on the server; bounds how long a stop takes to be seen


class PrefillWorker:
    def __init__(
        self,
        engine: Engine,
        queue: PrefillQueue,
        instance_id: str,
        *,
        nc: NATS,
        receipt_timeout: float,
        concurrency: int,
    ):
        """``nc`` carries results to decode workers (in ``queue.namespace``) and their receipts back."""
        self.engine, self.queue, self.instance_id = engine, queue, instance_id
        self._nc = nc
        self._namespace = queue.namespace
        self._receipt_timeout = receipt_timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._encode = wire.encoder.encode
        self._decode_receipt = wire.decoder(wire.PrefillReceipt).decode
        self.prefilled = 0
        self.expired = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stopping: asyncio.Event) -> None:
        """Pull and serve until ``stopping`` is set; then finish the requests already pulled."""
        try:
            while not stopping.is_set():
                await self._slots.acquire()
                delivery = None if stopping.is_set() else await self._pull()
                if delivery is None:
                    self._slots.release()
                    continue
                if stopping.is_set():  # pulled as the stop came: another worker takes it now
                    await delivery.give_back()
                    self._slots.release()
                    continue
                task = asyncio.create_task(
                    self._serve(delivery), name=f"prefill-{delivery.request.request_id}"
                )
                self._tasks.add(task)
                task.add_done_callback(self._done)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("prefill task failed", exc_info=task.exception())

    async def _pull(self) -> Delivery | None:
        try:
            return await self.queue.pull(timeout=PULL_WAIT)
        except nats.errors.Error as exc:  # NATS reconnecting: try again on the next turn
            log.warning("prefill queue pull failed: %r", exc)
            await asyncio.sleep(PULL_WAIT)  # back off, not synchronisation
            return None

    async def _serve(self, delivery: Delivery) -> None:
        request = delivery.request
        if time.time() > request.deadline:  # its decode worker prefilled it locally by now
            self.expired += 1
            await delivery.ack()
            return
        async with delivery.keep_alive():
            result = await self._prefill(request)
            try:
                status = await self._report(request, result)
            finally:
                await self.engine.release_kv(request.request_id)
        log.debug("prefill %s: decode worker answered %s", request.request_id, status.name)
        await delivery.ack()

    async def _prefill(self, request: wire.PrefillRequest) -> wire.PrefillResult:
        engine_request = wire.GenerateRequest(
            request_id=request.request_id,
            token_ids=request.token_ids,
            sampling=request.sampling,
            model=request.model,
            phase=wire.Phase.PREFILL,
        )
        params = None
        try:
            async with contextlib.aclosing(self.engine.generate(engine_request)) as outputs:
                async for output in outputs:
                    params = output.kv_transfer_params or params
        except ServingError as exc:
            return wire.PrefillResult(request.request_id, self.instance_id, error=exc.info)
        if params is None:
            info = KvTransferError("the prefill engine returned no kv_transfer_params").info
            return wire.PrefillResult(request.request_id, self.instance_id, error=info)
        self.prefilled += 1
        return wire.PrefillResult(request.request_id, self.instance_id, kv_transfer_params=params)

    async def _report(self, request: wire.PrefillRequest, result: wire.PrefillResult) -> wire.ReceiptStatus:
        """Send the result to the decode worker; its receipt, or UNKNOWN if it is gone or silent."""
        subject = prefill_done_subject(self._namespace, request.decode_instance_id)
        try:
            reply = await self._nc.request(subject, self._encode(result), timeout=self._receipt_timeout)
            return self._decode_receipt(reply.data).status
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, msgspec.DecodeError) as exc:
            log.warning(
                "decode worker %s did not take %s: %r", request.decode_instance_id, request.request_id, exc
            )
            return wire.ReceiptStatus.UNKNOWN
