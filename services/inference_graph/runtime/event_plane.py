"""KV cache events and load metrics over NATS core pub/sub.

Each worker publishes on its own subjects (``names.kv_events_subject`` /
``names.load_subject``); consumers subscribe to the namespace wildcard. Batches
carry a per-publisher ``seq`` starting at 1, so a consumer can tell a gap (lost
message, or a restarted worker: seq goes back to 1) and resynchronise.

Durability: core NATS drops what nobody hears, so a restarted router misses
history. Recovery is a *snapshot request* rather than a JetStream replay: each
worker keeps a mirror of what it published (``roles.worker.kv_snapshot``) and
answers ``KV_SNAPSHOT_ENDPOINT`` on its own request-plane subject with its
blocks and the ``seq`` of the last batch they include (``KvSnapshotChunk``
frames); the router loads that and applies the batches after it. A replay would
have to keep every event since the oldest live block; a snapshot is bounded by
the cache size. ``EventPublisher(on_batch=...)`` lets the mirror record a batch
before it leaves, so a snapshot never lags the stream a consumer hears.
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
from .nats_flush import interest_registered

log = logging.getLogger(__name__)

T = TypeVar("T")
Callback = Callable[[T], Awaitable[None] | None]


KV_SNAPSHOT_ENDPOINT = "kv_snapshot"  # served by each worker instance, on its component's subjects
SNAPSHOT_CHUNK_BLOCKS = 16384  # blocks per frame: ~300 KB, under NATS's default 1 MB max payload


class KvSnapshotChunk(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Part of one worker's cache as of batch ``seq``: parallel lists engine hash -> router hash.

    Lives here, next to the protocol that uses it, rather than in ``wire``; the
    same rule holds: fields are appended, never reordered.
    """

    instance_id: str
    seq: int
    block_size: int
    engine_hashes: list[int]
    router_hashes: list[int]


class EventPublisher:
    """Publishes one instance's KV events and load metrics.

    ``on_batch(batch)`` (optional) sees each KV batch before it is sent.
    """

    def __init__(
        self,
        nc: NATS,
        namespace: str,
        instance_id: str,
        on_batch: Callable[[wire.KvEventBatch], None] | None = None,
    ):
        self._nc = nc
        self._on_batch = on_batch
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
        if self._on_batch is not None:
            self._on_batch(batch)
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


async def _subscribe(nc: NATS, subject: str, type_: type[T], callback: Callback[T]) -> Subscription:
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
    await interest_registered(nc)  # interest is registered at the server when we return
    return sub


def snapshot_chunks(
    instance_id: str, seq: int, block_size: int, pairs: list[tuple[int, int]]
) -> list[KvSnapshotChunk]:
    """Split (engine hash, router hash) pairs into frames; an empty cache is one empty chunk."""
    chunks = []
    for start in range(0, max(1, len(pairs)), SNAPSHOT_CHUNK_BLOCKS):
        part = pairs[start : start + SNAPSHOT_CHUNK_BLOCKS]
        chunks.append(
            KvSnapshotChunk(instance_id, seq, block_size, [e for e, _ in part], [r for _, r in part])
        )
    return chunks


def join_chunks(chunks: list[KvSnapshotChunk]) -> tuple[int, dict[int, int]]:
    """(seq, engine hash -> router hash) from a snapshot's frames; they must agree on ``seq``."""
    if not chunks:
        raise ValueError("empty snapshot: no chunk")
    seq = chunks[0].seq
    blocks: dict[int, int] = {}
    for chunk in chunks:
        if chunk.seq != seq or len(chunk.engine_hashes) != len(chunk.router_hashes):
            raise ValueError(f"inconsistent snapshot chunks of {chunk.instance_id}")
        blocks.update(zip(chunk.engine_hashes, chunk.router_hashes, strict=True))
    return seq, blocks
