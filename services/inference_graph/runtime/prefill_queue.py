"""The prefill queue: a NATS JetStream work queue between decode and prefill workers.

One stream per namespace (``IG_PREFILL_{ns}``, subject ``ig.{ns}.prefill.queue``)
with work-queue retention: a message lives until a consumer acks it, and then
it is gone. One durable pull consumer (``prefill``) is shared by every prefill
worker: a free worker pulls the next request (pulling is the load balancing),
a busy one pulls nothing.

Settings, chosen on purpose (docs/disaggregation.md):

- explicit acks, given only once the decode worker holds the KV (so a prefill
  worker that dies at any point before that leads to redelivery);
- ``ack_wait`` short (default 10 s): it is how long a dead prefill worker's
  request waits before another worker gets it. A live worker that needs longer
  (a long prefill, waiting for the decode worker to pull the KV) says so with
  in-progress acks (``+WPI``) every ``ack_wait / 3`` (``Delivery.keep_alive``);
- ``max_deliver`` small (default 3): a request that took down several prefill
  workers is not handed to the next; its decode worker prefills it locally
  when its remote deadline passes;
- file storage: the queue survives a nats-server restart, and (like any
  JetStream stream) its consumers' restarts;
- ``max_ack_pending`` unlimited: each worker limits itself by pulling only when free.

``depth()`` is the number of requests not yet pulled: the decode worker's
conditional rule compares it with ``maxPrefillQueueSize``, and workers publish
it in their load metrics for the planner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from .. import wire
from .names import SUBJECT_ROOT, token

log = logging.getLogger(__name__)

CONSUMER = "prefill"
_DEPTH_MAX_AGE = 0.05  # seconds a measured depth is reused (one JetStream API call per 50 ms at most)


class JetStreamUnavailable(RuntimeError):
    """The NATS server has no JetStream, so there can be no prefill queue."""


def stream_name(namespace: str) -> str:
    return f"IG_PREFILL_{token(namespace)}"


def queue_subject(namespace: str) -> str:
    return ".".join([SUBJECT_ROOT, token(namespace), "prefill", "queue"])


@dataclass(frozen=True)
class QueueSettings:
    ack_wait: float = 10.0
    max_deliver: int = 3


class Delivery:
    """One pulled request and its JetStream message: keep it alive, then ack or give it back."""

    def __init__(self, msg: Msg, request: wire.PrefillRequest, ack_wait: float):
        self.msg = msg
        self.request = request
        self._ack_wait = ack_wait
        self.done = False

    @property
    def num_delivered(self) -> int:
        return self.msg.metadata.num_delivered

    @contextlib.asynccontextmanager
    async def keep_alive(self) -> AsyncIterator[None]:
        """While the body runs, tell JetStream every ``ack_wait / 3`` that the work is in progress."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(self._ack_wait / 3)  # a heartbeat period, not synchronisation
                with contextlib.suppress(nats.errors.Error):
                    await self.msg.in_progress()

        task = asyncio.create_task(tick())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def ack(self) -> None:
        """The request is finished (its decode worker holds the KV, or nobody needs it): remove it."""
        if not self.done:
            self.done = True
            await self.msg.ack_sync()

    async def give_back(self) -> None:
        """Redeliver at once (to this or another worker), e.g. when shutting down before starting it."""
        if not self.done:
            self.done = True
            await self.msg.nak()


class PrefillQueue:
    """Both ends of one namespace's prefill queue; ``ensure()`` creates the stream and consumer."""

    def __init__(self, nc: NATS, namespace: str, settings: QueueSettings | None = None):
        self._nc = nc
        self._js = nc.jetstream()
        self.namespace = namespace
        self.settings = settings or QueueSettings()
        self.stream = stream_name(namespace)
        self.subject = queue_subject(namespace)
        self._encode = wire.encoder.encode
        self._decode = wire.decoder(wire.PrefillRequest).decode
        self._depth: tuple[float, int] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def ensure(self) -> None:
        """Create (or update) the stream and the shared consumer; every worker may call it.

        Raises ``JetStreamUnavailable`` when the NATS server runs without JetStream."""
        try:
            await self._create()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise JetStreamUnavailable(
                "spec.disaggregation.enabled: the prefill queue needs JetStream, and the NATS server "
                f"does not offer it ({exc!r}); start nats-server with -js (the embedded one does)"
            ) from exc

    async def _create(self) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:  # exists with another config: align it
            await self._js.update_stream(config)
        consumer = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait,
            max_deliver=self.settings.max_deliver,
            max_ack_pending=-1,
        )
        await self._js.add_consumer(self.stream, consumer)

    # ------------------------------------------------------------ decode side

    async def enqueue(self, request: wire.PrefillRequest) -> None:
        """Put a request on the queue; returns once JetStream stored it."""
        await self._js.publish(self.subject, self._encode(request), stream=self.stream)
        self._depth = None

    async def depth(self) -> int:
        """Requests waiting for a prefill worker (not yet pulled), measured at most 50 ms ago."""
        now = time.monotonic()
        if self._depth is not None and now - self._depth[0] < _DEPTH_MAX_AGE:
            return self._depth[1]
        info = await self._js.consumer_info(self.stream, CONSUMER)
        pending: int = info.num_pending  # nats-py leaves consumer_info's result untyped
        self._depth = (now, pending)
        return pending

    # ------------------------------------------------------------ prefill side

    async def pull(self, timeout: float) -> Delivery | None:
        """The next request, or None if none came within ``timeout`` (a server-side long poll)."""
        if self._sub is None:
            self._sub = await self._js.pull_subscribe_bind(CONSUMER, self.stream)
        try:
            msgs = await self._sub.fetch(1, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return None
        msg = msgs[0]
        try:
            request = self._decode(msg.data)
        except Exception:
            log.error("prefill queue: undecodable message dropped (%d bytes)", len(msg.data))
            await msg.term()
            return None
        return Delivery(msg, request, self.settings.ack_wait)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
