"""Streamed request/response over NATS core.

Protocol (frames are ``wire.ResponseFrame``, msgpack, sent to the caller's reply
subject)::

    caller                                   server instance
      PUB ig.ns.comp.ep[.iid]  reply=INBOX -->
                                        <-- ACK   seq 0, instance_id
                                        <-- DATA  seq 1.. payload (one per handler yield)
                                        <-- END   | ERROR(info)   (last frame)
      PUB ig.ns.comp.control.iid  CancelRequest(request_id=INBOX)  (caller gave up early)

Why each piece exists:

- ACK names the instance that took the request, so the caller knows where to send
  a cancel and which discovery "removed" event means its stream is dead
  (``instance_lost``); a missing ACK is a fast, distinct failure.
- ``seq`` lets the caller detect a lost or reordered frame instead of returning a
  silently truncated answer.
- NATS "no responders" (a 503 status message, enabled by nats-py by default)
  turns "nobody serves this" into an immediate error instead of a timeout.
- Cancel closes the handler's async generator, so its ``finally`` runs: that is
  where a worker aborts the engine request and frees KV blocks.

Latency: ``nc.publish`` only appends to nats-py's pending buffer and wakes its
flusher task, which writes on the next event-loop turn without any timer, so
frames are not held back (measured in tests/runtime/test_request_plane.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import wire
from ..errors import ServingError, server_error, service_unavailable
from . import names
from .errors import (
    ClientClosedError,
    InstanceLostError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)

log = logging.getLogger(__name__)

Handler = Callable[[bytes], AsyncGenerator[bytes, None]]

_encode = wire.encoder.encode
_NO_RESPONDERS = "503"
_FrameKind = wire.FrameKind
_ABANDONED_TTL = 60.0  # how long a late ACK of an abandoned stream still triggers a cancel


# ---------------------------------------------------------------- server


class EndpointServer:
    """Serves endpoints of one instance: load-balanced and directed subjects, plus control."""

    def __init__(self, nc: NATS, namespace: str, component: str, instance_id: str):
        self._nc = nc
        self.namespace = namespace
        self.component = component
        self.instance_id = instance_id
        self._request_subs: list[Subscription] = []
        self._control_sub: Subscription | None = None
        self._streams: dict[str, asyncio.Task[None]] = {}  # reply subject -> handler task
        self._cancelled_by_caller: set[str] = set()
        self._stopping = False
        # Set once stop() no longer takes new requests (readiness can report it).
        self.closed_to_new_requests = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    async def serve(self, endpoint: str, handler: Handler) -> None:
        """Start taking requests for ``endpoint``; ``handler(payload)`` yields response payloads."""
        if self._stopping:
            raise RuntimeError("EndpointServer is stopping")
        names.check_endpoint(endpoint)
        await self._ensure_control()

        async def on_request(msg: Msg) -> None:
            await self._accept(msg, handler)

        lb = names.endpoint_subject(self.namespace, self.component, endpoint)
        direct = names.instance_subject(self.namespace, self.component, endpoint, self.instance_id)
        self._request_subs.append(
            await self._nc.subscribe(lb, queue=names.queue_group(self.component), cb=on_request)
        )
        self._request_subs.append(await self._nc.subscribe(direct, cb=on_request))
        await self._nc.flush()  # the server knows our interest once serve() returns

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking requests, let in-flight streams finish until the deadline, cancel the rest.

        Request subscriptions are *drained* (UNSUB, then a round trip so messages the
        server routed to us before the UNSUB are still accepted), so no request is
        dropped between "routed here" and "we stopped listening". Streams cancelled
        at the deadline get an ERROR 503 frame, so their callers retry elsewhere.
        """
        self._stopping = True
        subs, self._request_subs = self._request_subs, []
        await asyncio.gather(*(sub.drain() for sub in subs), return_exceptions=True)
        self.closed_to_new_requests.set()
        tasks = list(self._streams.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._control_sub is not None:
            with contextlib.suppress(Exception):
                await self._control_sub.unsubscribe()
            self._control_sub = None
        with contextlib.suppress(Exception):
            await self._nc.flush()

    # -- internals

    async def _ensure_control(self) -> None:
        if self._control_sub is None:
            subject = names.control_subject(self.namespace, self.component, self.instance_id)
            self._control_sub = await self._nc.subscribe(subject, cb=self._make_control_cb())

    def _make_control_cb(self) -> Callable[[Msg], Awaitable[None]]:
        decode = wire.decoder(wire.CancelRequest).decode  # one typed decoder per subscription

        async def on_control(msg: Msg) -> None:
            try:
                cancel = decode(msg.data)
            except msgspec.DecodeError:
                log.warning("undecodable control message on %s", msg.subject)
                return
            task = self._streams.get(cancel.request_id)
            if task is not None:
                self._cancelled_by_caller.add(cancel.request_id)
                task.cancel()

        return on_control

    async def _accept(self, msg: Msg, handler: Handler) -> None:
        """Runs in the subscription's callback task: ACK at once, serve in a new task."""
        reply = msg.reply
        if not reply or reply in self._streams:
            log.warning("ignoring request on %s without a (fresh) reply subject", msg.subject)
            return
        # Registered before the ACK goes out, so a cancel can never miss it. The ACK still
        # precedes every DATA frame: publish() appends to the send buffer synchronously,
        # and the task only starts once this callback yields.
        task = asyncio.get_running_loop().create_task(self._run(reply, msg.data, handler))
        self._streams[reply] = task
        task.add_done_callback(lambda _t: self._forget(reply))
        try:
            await self._send(reply, wire.ResponseFrame(_FrameKind.ACK, 0, instance_id=self.instance_id))
        except Exception:
            task.cancel()
            raise

    def _forget(self, reply: str) -> None:
        self._streams.pop(reply, None)
        self._cancelled_by_caller.discard(reply)

    async def _run(self, reply: str, payload: bytes, handler: Handler) -> None:
        seq = 1
        try:
            async with contextlib.aclosing(handler(payload)) as chunks:
                async for chunk in chunks:
                    await self._send(reply, wire.ResponseFrame(_FrameKind.DATA, seq, payload=chunk))
                    seq += 1
            await self._send(reply, wire.ResponseFrame(_FrameKind.END, seq))
        except asyncio.CancelledError:
            if reply not in self._cancelled_by_caller:  # we are stopping: tell the caller
                await self._send_error(reply, seq, service_unavailable("instance is shutting down").info)
        except ServingError as exc:
            await self._send_error(reply, seq, exc.info)
        except Exception as exc:
            log.exception("handler failed for %s", reply)
            await self._send_error(reply, seq, server_error(str(exc) or repr(exc)).info)

    async def _send_error(self, reply: str, seq: int, info: wire.ErrorInfo) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone; nothing else to do
            await self._send(reply, wire.ResponseFrame(_FrameKind.ERROR, seq, error=info))

    async def _send(self, reply: str, frame: wire.ResponseFrame) -> None:
        await self._nc.publish(reply, _encode(frame))


# ---------------------------------------------------------------- client


_Item = wire.ResponseFrame | Exception  # what a stream's queue holds: a frame, or the error that ends it


@dataclass(eq=False)
class _Stream:
    """Client-side state of one call; the reply callback feeds ``queue``."""

    subject: str
    reply: str
    target: str | None  # instance asked for (directed calls)
    instance_id: str = ""  # instance that ACKed
    finished: bool = False
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)

    @property
    def serving(self) -> str:
        return self.instance_id or self.target or ""


class EndpointClient:
    """Calls endpoints of one component; one reply subscription multiplexes all streams."""

    def __init__(self, nc: NATS, namespace: str, component: str):
        self._nc = nc
        self.namespace = namespace
        self.component = component
        self._inbox_prefix = nc.new_inbox()
        self._reply_sub: Subscription | None = None
        self._sub_lock = asyncio.Lock()
        self._streams: dict[str, _Stream] = {}  # reply token -> stream
        # Streams given up before their ACK: (reply, expiry) by token, oldest first.
        self._abandoned: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lost: dict[str, float] = {}  # instance_id -> expiry, for ACKs that arrive late
        self._decode = wire.decoder(wire.ResponseFrame).decode
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    async def stream(
        self,
        endpoint: str,
        payload: bytes,
        instance_id: str | None = None,
        *,
        ack_timeout: float = 5.0,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Send one request; yield each DATA payload; return at END; raise at ERROR.

        Load-balanced across the component unless ``instance_id`` is given. Leaving
        early (``break``, ``aclose()``, task cancelled) cancels the remote stream; wrap
        the call in ``contextlib.aclosing`` so that happens at once rather than when
        the generator is garbage-collected.
        """
        batches = self.stream_batches(
            endpoint, payload, instance_id, ack_timeout=ack_timeout, idle_timeout=idle_timeout
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for item in batch:
                    yield item

    async def stream_batches(
        self,
        endpoint: str,
        payload: bytes,
        instance_id: str | None = None,
        *,
        ack_timeout: float = 5.0,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[list[bytes], None]:
        """Like ``stream``, but yields every DATA payload that has already arrived as one list.

        A caller that keeps up gets one payload per list; one that lags gets what
        queued up meanwhile, so it can handle (and forward) them as one message. Nothing
        waits for more frames: the first payload of a list is the one the caller
        awaited. An END, ERROR or failure behind queued payloads comes after them.
        """
        if self._closed:
            raise ClientClosedError("EndpointClient is closed")
        await self._ensure_reply_sub()
        token = secrets.token_hex(8)
        subject = (
            names.instance_subject(self.namespace, self.component, endpoint, instance_id)
            if instance_id
            else names.endpoint_subject(self.namespace, self.component, endpoint)
        )
        st = _Stream(subject, f"{self._inbox_prefix}.{token}", instance_id)
        self._streams[token] = st
        queue = st.queue
        data = _FrameKind.DATA
        try:
            await self._nc.publish(subject, payload, reply=st.reply)
            ack = await self._next(st, ack_timeout, "ack")
            if ack.kind != _FrameKind.ACK or ack.seq != 0:
                self._raise_unexpected(st, ack, "ACK")
            expected = 1
            held: _Item | None = None  # an item taken from the queue behind a batch, handled next
            while True:
                if held is None:
                    frame = await self._next(st, idle_timeout, "idle")
                else:
                    frame, held = self._unwrap(st, held), None
                if frame.seq != expected:
                    raise ProtocolError(subject, f"frame seq {frame.seq}, expected {expected}")
                expected += 1
                if frame.kind == _FrameKind.END:
                    st.finished = True
                    return
                if frame.kind != data:
                    self._raise_unexpected(st, frame, "DATA or END")
                batch = [frame.payload]
                while queue.qsize():
                    item = queue.get_nowait()
                    if type(item) is wire.ResponseFrame and item.kind == data and item.seq == expected:
                        batch.append(item.payload)
                        expected += 1
                    else:
                        held = item
                        break
                yield batch
        finally:
            self._streams.pop(token, None)
            if not st.finished:
                if st.instance_id:
                    await self._send_cancel(st.instance_id, st.reply)
                else:  # gave up before the ACK: cancel once we learn who took it
                    self._remember_abandoned(token, st.reply)

    def instance_lost(self, instance_id: str) -> int:
        """Fail every stream served by (or directed to) ``instance_id`` now; returns how many.

        Wire it to discovery: ``watch.add_listener(client.on_instance_event)``.
        """
        now = time.monotonic()
        self._lost = {iid: t for iid, t in self._lost.items() if t > now}  # rare event: prune here
        self._lost[instance_id] = now + _ABANDONED_TTL
        lost = [st for st in self._streams.values() if st.serving == instance_id and not st.finished]
        for st in lost:
            st.queue.put_nowait(InstanceLostError(instance_id))
        return len(lost)

    def on_instance_event(self, event: str, info: wire.InstanceInfo) -> None:
        """A discovery listener: a "removed" instance fails its in-flight streams."""
        if event == "removed":
            self.instance_lost(info.instance_id)

    async def close(self) -> None:
        """Fail open streams with ``ClientClosedError`` and drop the reply subscription."""
        self._closed = True
        for st in list(self._streams.values()):
            st.queue.put_nowait(ClientClosedError("EndpointClient was closed"))
        if self._reply_sub is not None:
            with contextlib.suppress(Exception):
                await self._reply_sub.unsubscribe()
            self._reply_sub = None

    # -- internals

    async def _ensure_reply_sub(self) -> None:
        if self._reply_sub is None:
            async with self._sub_lock:
                if self._reply_sub is None:
                    self._reply_sub = await self._nc.subscribe(f"{self._inbox_prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        """Decode here, in arrival order, so an ACK names the serving instance at once
        (``instance_lost`` and cancel need it even before the consumer reads the frame)."""
        token = msg.subject[len(self._inbox_prefix) + 1 :]
        st = self._streams.get(token)
        if st is None:
            if token in self._abandoned:  # other frames of abandoned streams are dropped
                await self._cancel_late_ack(token, msg)
            return
        item = self._frame_or_error(st.subject, msg)
        st.queue.put_nowait(item)
        if isinstance(item, wire.ResponseFrame) and item.kind == _FrameKind.ACK and not st.instance_id:
            st.instance_id = item.instance_id
            if self._recently_lost(item.instance_id):  # its ACK overtook its loss notice
                st.queue.put_nowait(InstanceLostError(item.instance_id))

    def _frame_or_error(self, subject: str, msg: Msg) -> _Item:
        if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            return NoRespondersError(subject)
        try:
            return self._decode(msg.data)
        except msgspec.DecodeError as exc:
            return ProtocolError(subject, f"undecodable frame: {exc}")

    def _recently_lost(self, instance_id: str) -> bool:
        expiry = self._lost.get(instance_id)
        if expiry is not None and expiry < time.monotonic():
            del self._lost[instance_id]
            return False
        return expiry is not None

    def _remember_abandoned(self, token: str, reply: str) -> None:
        now = time.monotonic()
        while self._abandoned and next(iter(self._abandoned.values()))[1] < now:
            self._abandoned.popitem(last=False)  # expired: that ACK is not coming
        self._abandoned[token] = (reply, now + _ABANDONED_TTL)

    async def _cancel_late_ack(self, token: str, msg: Msg) -> None:
        frame = self._frame_or_error("", msg)
        if isinstance(frame, wire.ResponseFrame) and frame.kind == _FrameKind.ACK:
            reply, _ = self._abandoned.pop(token)
            await self._send_cancel(frame.instance_id, reply)

    async def _next(self, st: _Stream, limit: float | None, phase: str) -> wire.ResponseFrame:
        """The next frame, or raise the error that ended the stream."""
        if not st.queue.empty():
            item = st.queue.get_nowait()
        else:
            try:
                async with asyncio.timeout(limit):
                    item = await st.queue.get()
            except TimeoutError:
                raise RequestTimeoutError(st.subject, phase, limit or 0.0, st.serving) from None
        return self._unwrap(st, item)

    @staticmethod
    def _unwrap(st: _Stream, item: _Item) -> wire.ResponseFrame:
        """A queued item: the frame, or raise the error that ended the stream."""
        if isinstance(item, BaseException):
            if isinstance(item, NoRespondersError):
                st.finished = True  # no ACK will ever come: nothing to cancel
            raise item
        return item

    def _raise_unexpected(self, st: _Stream, frame: wire.ResponseFrame, wanted: str) -> None:
        if frame.kind == _FrameKind.ERROR:
            st.finished = True
            info = frame.error or server_error("ERROR frame without info").info
            raise RemoteError(info, st.instance_id or frame.instance_id)
        raise ProtocolError(st.subject, f"got {frame.kind.name} seq {frame.seq}, wanted {wanted}")

    async def _send_cancel(self, instance_id: str, reply: str) -> None:
        subject = names.control_subject(self.namespace, self.component, instance_id)
        with contextlib.suppress(Exception):  # best effort: the instance may be gone
            await self._nc.publish(subject, _encode(wire.CancelRequest(request_id=reply)))
