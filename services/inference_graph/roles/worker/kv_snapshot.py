"""A worker's mirror of the KV events it published, served as a snapshot.

A router that starts late, or that lost some of a worker's batches, asks the
worker for its cache instead of guessing (``runtime.event_plane``,
``KV_SNAPSHOT_ENDPOINT``). The mirror is a one-worker ``core.kv_index.KvIndex``
fed with every batch the worker publishes, *before* it is sent: it holds
exactly what a router that heard every batch would hold for this worker, and
the ``seq`` of the last batch it includes, so the router can load it and apply
the batches after it. It costs what the router's own index costs per block
(one dict entry and one chained hash per stored block).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from ... import wire
from ...core.kv_index import KvIndex
from ...runtime import event_plane

log = logging.getLogger(__name__)


class KvMirror:
    """What this worker has announced: engine hash -> router hash, as of batch ``seq``."""

    def __init__(self, instance_id: str, block_size: int) -> None:
        self.instance_id = instance_id
        self.block_size = block_size
        self._index = KvIndex(block_size)

    def record(self, batch: wire.KvEventBatch) -> None:
        """Apply one published batch (``EventPublisher``'s ``on_batch``)."""
        if self._index.apply(batch) is not None:
            # Our own stream cannot gap; a malformed event would. Never serve a wrong snapshot.
            log.error(
                "KV mirror of %s rejected its own batch %d; snapshot reset", self.instance_id, batch.seq
            )
            self._index.load_snapshot(self.instance_id, {}, batch.seq)

    def snapshot(self) -> list[event_plane.KvSnapshotChunk]:
        snap = self._index.snapshot_of(self.instance_id)
        return event_plane.snapshot_chunks(
            self.instance_id, snap.seq, self.block_size, list(snap.blocks.items())
        )

    def make_handler(self):
        """The ``kv_snapshot`` endpoint: the request body is ignored; one or more chunks out."""
        encode = wire.encoder.encode

        async def handle(payload: bytes) -> AsyncGenerator[bytes, None]:
            for chunk in self.snapshot():  # taken at once: no batch can land between chunks
                yield encode(chunk)

        return handle
