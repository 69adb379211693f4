"""KV cache events and load metrics over NATS core pub/sub.

Each worker publishes on its own subjects (``names.kv_events_subject`` /
``names.load_subject``); consumers subscribe to the namespace wildcard. Batches
carry a per-publisher ``seq`` starting at 1, so a consumer can tell a gap (lost
message, or a restarted worker: seq goes back to 1) and resynchronise.

Seam for durability: core NATS drops what nobody hears, so a restarted router
misses history. The router work will add a JetStream stream over
``names.kv_events_wildcard(ns)``; publishers stay the same (JetStream captures
core publishes on a stream's subjects), and only the subscribe side grows a
replaying variant next to :func:`subscribe_kv` with the same callback type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import wire
from . import names

log = logging.getLogger(__name__)

T = TypeVar("T")
Callback = Callable[[T], Awaitable[None] | None]


class EventPublisher:
    """Publishes one instance's KV events and load metrics."""

    def __init__(self, nc: NATS, namespace: str, instance_id: str):
        self._nc = nc
        self.namespace = namespace
        self.instance_id = instance_id
        self._kv_subject = names.kv_events_subject(namespace, instance_id)
        self._load_subject = names.load_subject(namespace, instance_id)
        self._seq = 0

    @property
    def seq(self) -> int:
        """Seq of the last KV batch published (0 before the first)."""
        return self._seq

    async def publish_kv(self, events: list[wire.KvEvent]) -> wire.KvEventBatch:
        """Wrap ``events`` in the next numbered batch and publish it."""
        self._seq += 1
        batch = wire.KvEventBatch(self.instance_id, self._seq, time.time(), events)
        await self._nc.publish(self._kv_subject, wire.encoder.encode(batch))
        return batch

    async def publish_load(self, metrics: wire.LoadMetrics) -> None:
        await self._nc.publish(self._load_subject, wire.encoder.encode(metrics))


async def subscribe_kv(
    nc: NATS, namespace: str, callback: Callback[wire.KvEventBatch], instance_id: str | None = None
) -> Subscription:
    """``callback(batch)`` for KV batches of every worker (or of one instance)."""
    subject = (
        names.kv_events_subject(namespace, instance_id)
        if instance_id
        else names.kv_events_wildcard(namespace)
    )
    return await _subscribe(nc, subject, wire.KvEventBatch, callback)


async def subscribe_load(
    nc: NATS, namespace: str, callback: Callback[wire.LoadMetrics], instance_id: str | None = None
) -> Subscription:
    """``callback(metrics)`` for load metrics of every worker (or of one instance)."""
    subject = names.load_subject(namespace, instance_id) if instance_id else names.load_wildcard(namespace)
    return await _subscribe(nc, subject, wire.LoadMetrics, callback)


async def _subscribe(nc: NATS, subject: str, type_: type, callback: Callback) -> Subscription:
    """Subscribe with one typed decoder; callbacks may be sync or async, and run in order."""
    decode = wire.decoder(type_).decode

    async def on_msg(msg: Msg) -> None:
        try:
            item = decode(msg.data)
        except msgspec.DecodeError:
            log.warning("undecodable %s on %s", type_.__name__, msg.subject)
            return
        try:
            result = callback(item)
            if result is not None:
                await result
        except Exception:
            log.exception("event callback failed on %s", msg.subject)

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()  # interest is registered at the server when we return
    return sub
