"""vLLM's KV cache events, read from its ZMQ publisher and normalised to ``wire`` events.

vLLM (0.32) publishes from the engine-core process on a PUB socket it binds
(``ipc://``, ``inproc://`` or ``tcp://*:port``; any other tcp address makes it
connect instead). Each message has three frames::

    [topic, seq (8 bytes, big-endian, from 0), msgpack([ts, [event, ...], dp_rank])]

Events are msgpack maps tagged by ``"type"``::

    {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": h | None,
     "token_ids": [...], "block_size": 32, "lora_id": None, "medium": "GPU", ...}
    {"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU", ...}
    {"type": "AllBlocksCleared"}

Block hashes are ints (the low 64 bits of vLLM's sha256 block hash, the default
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``) or the raw hash bytes; both are
normalised to the same unsigned 64-bit int, so BlockRemoved and
parent_block_hash map onto earlier BlockStored hashes either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .. import wire

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
# Events about other tiers (CPU offloading, remote storage) do not describe the
# blocks a request can hit in this engine's own cache.
_MAIN_MEDIA = (None, "GPU")


def normalize_hash(value: int | bytes) -> int:
    """An engine block hash as an unsigned 64-bit int.

    Bytes are read big-endian and truncated to their low 64 bits, which is what
    vLLM itself does when it publishes int hashes, so both forms agree.
    """
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big") & _MASK64
    return int(value) & _MASK64


def normalize_event(event: dict[str, Any]) -> wire.KvEvent | None:
    """One decoded vLLM event as a ``wire`` event; None for events we ignore."""
    kind = event.get("type")
    if kind == "BlockStored":
        if event.get("medium") not in _MAIN_MEDIA:
            return None
        parent = event.get("parent_block_hash")
        return wire.BlockStored(
            block_hashes=[normalize_hash(h) for h in event["block_hashes"]],
            parent_block_hash=None if parent is None else normalize_hash(parent),
            token_ids=list(event["token_ids"]),
            block_size=int(event["block_size"]),
        )
    if kind == "BlockRemoved":
        if event.get("medium") not in _MAIN_MEDIA:
            return None
        return wire.BlockRemoved(block_hashes=[normalize_hash(h) for h in event["block_hashes"]])
    if kind == "AllBlocksCleared":
        return wire.AllBlocksCleared()
    log.debug("ignoring KV event of type %r", kind)
    return None


def decode_payload(payload: bytes) -> tuple[float, list[wire.KvEvent]]:
    """The msgpack payload of one message: (timestamp, normalised events)."""
    ts, events, *_ = msgspec.msgpack.decode(payload)
    out = [e for e in (normalize_event(ev) for ev in events) if e is not None]
    return float(ts), out


class KvEventSubscriber:
    """A SUB socket on one engine's KV event publisher.

    Connect it before the engine starts publishing (ZMQ drops what a PUB sends
    before the subscriber is connected). One consumer at a time iterates
    ``batches()``; ``close()`` ends that iteration.
    """

    def __init__(self, endpoint: str, topic: str = ""):
        self.endpoint = endpoint
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self._expected_seq = 0
        self._closed = False
        self._pending: asyncio.Future[list[bytes]] | None = None
        self.gaps = 0  # number of sequence gaps seen (lost batches)

    async def batches(self) -> AsyncIterator[list[wire.KvEvent]]:
        """Normalised events, one list per engine batch with at least one event."""
        while not self._closed:
            # pyzmq returns a Future (ensure_future hands it back as is); its stub says Awaitable.
            self._pending = asyncio.ensure_future(self._sock.recv_multipart())
            try:
                frames = await self._pending
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and (task is None or task.cancelling() == 0):
                    return  # close() cancelled the receive, not our caller
                raise
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            finally:
                self._pending = None
            if len(frames) != 3:
                log.warning("unexpected KV event message with %d frames from %s", len(frames), self.endpoint)
                continue
            _topic, seq_bytes, payload = frames
            self._check_seq(int.from_bytes(seq_bytes, "big"))
            try:
                _ts, events = decode_payload(payload)
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("undecodable KV event batch from %s: %s", self.endpoint, exc)
                continue
            if events:
                yield events

    def _check_seq(self, seq: int) -> None:
        if seq != self._expected_seq:
            self.gaps += 1
            log.warning(
                "KV event gap on %s: expected batch %d, got %d (%d lost); the router's view of this "
                "worker's cache may be stale",
                self.endpoint,
                self._expected_seq,
                seq,
                seq - self._expected_seq,
            )
        self._expected_seq = seq + 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        self._sock.close(linger=0)
        self._ctx.term()
