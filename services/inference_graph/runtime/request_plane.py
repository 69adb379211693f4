"""Streamed request/response over NATS core.

Protocol (frames are ``wire.ResponseFrame``, msgpack, sent to the caller's reply
subject)::

    caller                                   server instance
      PUB ig.ns.comp.ep[.iid]  reply=INBOX -->
                                        <-- ACK   seq 0, instance_id
                                        <-- DATA  seq 1.. payload (one per handler yield)
                                        <-- HEARTBEAT seq=last sent (on a silent stream)
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
- HEARTBEAT and the liveness deadline: no stream waits without bound. A stream
  with no frame and no heartbeat for ``IG_STREAM_LIVENESS`` seconds fails with a
  retryable ``RequestTimeoutError``; a heartbeat (or a later frame) that names a
  frame the caller never got fails it with ``FramesLostError`` at once. NATS core
  does not redeliver: across a NATS restart frames are lost, and these turn the
  loss into a retryable error the processor migrates (docs/reliability.md).
- NATS outages: a request waits for the connection, retries "no responders" just
  after a reconnect, and is sent again if the connection drops before its ACK, all
  within ``IG_OUTAGE_WAIT`` seconds.

Latency: ``nc.publish`` only appends to nats-py's pending buffer and wakes its
flusher task, which writes on the next event-loop turn without any timer, so
frames are not held back (measured in tests/runtime/test_request_plane.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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
from ..settings import RuntimeSettings
from . import names
from .errors import (
    ClientClosedError,
    FramesLostError,
    InstanceLostError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from .nats_flush import interest_registered

log = logging.getLogger(__name__)

Handler = Callable[[bytes], AsyncGenerator[bytes, None]]

_encode = wire.encoder.encode
_NO_RESPONDERS = "503"
_FrameKind = wire.FrameKind
_ABANDONED_TTL = 60.0  # how long a late ACK of an abandoned stream still triggers a cancel
_DEFAULTS = RuntimeSettings()  # IG_STREAM_LIVENESS and IG_OUTAGE_WAIT when a caller passes none
_RETRY_MIN, _RETRY_MAX = 0.05, 0.5  # backoff while the responders of a subject subscribe again
_ACK_CHECK = 0.25  # while waiting for an ACK, how often the connection is looked at
_MAX_RESENDS = 3  # a request sent again because the connection dropped before its ACK


def _connected(nc: NATS) -> bool:
    return bool(nc.is_connected)


# ---------------------------------------------------------------- server


@dataclass(eq=False)
class _Served:
    """Server-side state of one stream: its handler task, and what was last sent when."""

    task: asyncio.Task[None] | None = None
    seq: int = 0  # the last frame sent (0: the ACK)
    last_sent: float = 0.0  # time.monotonic() of the last frame sent


class EndpointServer:
    """Serves endpoints of one instance: load-balanced and directed subjects, plus control.

    A stream on which the handler yields nothing for a quarter of ``liveness`` seconds
    (``IG_STREAM_LIVENESS``: a queued request, a long prefill) gets a HEARTBEAT frame, so
    the caller's liveness deadline ends only streams that are really dead.
    """

    def __init__(
        self,
        nc: NATS,
        namespace: str,
        component: str,
        instance_id: str,
        *,
        liveness: float = _DEFAULTS.stream_liveness,
    ):
        self._nc = nc
        self.namespace = namespace
        self.component = component
        self.instance_id = instance_id
        self.liveness = liveness
        self.heartbeat_interval = liveness / 4
        # Streams ended within ``liveness`` s, or since NATS went down: reply -> (seq of their last
        # frame, when). After a reconnect their callers get heartbeats too, for ``liveness`` s, so
        # one whose last frames were lost learns it.
        self._ended: dict[str, tuple[int, float]] = {}
        self._request_subs: list[Subscription] = []
        self._control_sub: Subscription | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._streams: dict[str, _Served] = {}  # reply subject -> its stream
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
        if self._heartbeats is None:
            self._heartbeats = asyncio.get_running_loop().create_task(
                self._send_heartbeats(), name=f"heartbeats {self.component}"
            )
        await interest_registered(self._nc)  # the server knows our interest once serve() returns

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
        tasks = [served.task for served in self._streams.values() if served.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await _cancel(self._heartbeats)
        self._heartbeats = None
        await _unsubscribe(self._control_sub)
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
            served = self._streams.get(cancel.request_id)
            if served is not None and served.task is not None:
                self._cancelled_by_caller.add(cancel.request_id)
                served.task.cancel()

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
        served = _Served(last_sent=time.monotonic())
        task = asyncio.get_running_loop().create_task(self._run(reply, served, msg.data, handler))
        served.task = task
        self._streams[reply] = served
        task.add_done_callback(lambda _t: self._forget(reply))
        try:
            await self._send(reply, wire.ResponseFrame(_FrameKind.ACK, 0, instance_id=self.instance_id))
        except Exception:
            task.cancel()
            raise

    def _forget(self, reply: str) -> None:
        served = self._streams.pop(reply, None)
        if served is not None and reply not in self._cancelled_by_caller:
            self._ended[reply] = (served.seq, time.monotonic())
        self._cancelled_by_caller.discard(reply)

    async def _run(self, reply: str, served: _Served, payload: bytes, handler: Handler) -> None:
        seq = 1
        try:
            async with contextlib.aclosing(handler(payload)) as chunks:
                async for chunk in chunks:
                    await self._send(reply, wire.ResponseFrame(_FrameKind.DATA, seq, payload=chunk))
                    served.seq, served.last_sent = seq, time.monotonic()
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
        finally:
            served.seq = seq  # the END or ERROR frame's

    async def _send_error(self, reply: str, seq: int, info: wire.ErrorInfo) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone; nothing else to do
            await self._send(reply, wire.ResponseFrame(_FrameKind.ERROR, seq, error=info))

    async def _send(self, reply: str, frame: wire.ResponseFrame) -> None:
        await self._nc.publish(reply, _encode(frame))

    async def _send_heartbeats(self) -> None:
        """One task for all streams: a HEARTBEAT on each stream silent for ``heartbeat_interval``.

        It carries the seq of the last frame sent, so a caller that has not seen that
        frame learns at once that frames were lost (e.g. across a NATS restart). While
        NATS is down nothing is sent: it would only fill the reconnect buffer.
        """
        interval = self.heartbeat_interval
        reconnects = self._nc.stats["reconnects"]
        recovering_until = -math.inf  # after a reconnect: heartbeats for ended streams too
        while True:
            await asyncio.sleep(interval / 2)  # the heartbeat period, not synchronisation
            now = time.monotonic()
            if now >= recovering_until:  # kept through an outage and the recovery after it
                self._prune_ended(now)
            if not _connected(self._nc):
                recovering_until = math.inf
                continue
            if self._nc.stats["reconnects"] != reconnects or recovering_until == math.inf:
                reconnects = self._nc.stats["reconnects"]
                recovering_until = now + self.liveness
            beats = [
                (reply, served.seq)
                for reply, served in list(self._streams.items())
                if now - served.last_sent >= interval
            ]
            for reply, _ in beats:
                self._streams[reply].last_sent = now
            if now < recovering_until:  # their last frames may have been lost in the outage
                beats += [(reply, seq) for reply, (seq, _) in self._ended.items()]
            for reply, seq in beats:
                frame = wire.ResponseFrame(_FrameKind.HEARTBEAT, seq, instance_id=self.instance_id)
                with contextlib.suppress(Exception):  # the connection may drop meanwhile
                    await self._send(reply, frame)

    def _prune_ended(self, now: float) -> None:
        limit = now - self.liveness
        while self._ended:
            reply, (_, ended) = next(iter(self._ended.items()))  # oldest first (insertion order)
            if ended >= limit:
                return
            del self._ended[reply]


# ---------------------------------------------------------------- client


_Item = wire.ResponseFrame | Exception  # what a stream's queue holds: a frame, or the error that ends it


@dataclass(eq=False)
class _Stream:
    """Client-side state of one call; the reply callback feeds ``queue``."""

    subject: str
    reply: str
    target: str | None  # instance asked for (directed calls)
    token: str = ""  # the reply subject's last token: the key in EndpointClient._streams
    instance_id: str = ""  # instance that ACKed
    finished: bool = False
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    acked: bool = False  # past the ACK: the liveness deadline applies (unless own_limit)
    own_limit: bool = False  # the call gave its own idle_timeout instead
    last_frame: float = 0.0  # time.monotonic() of the last frame (DATA, HEARTBEAT, ...) received
    expired: bool = False  # the liveness deadline already failed it

    @property
    def serving(self) -> str:
        return self.instance_id or self.target or ""


class EndpointClient:
    """Calls endpoints of one component; one reply subscription multiplexes all streams.

    Every stream has a liveness deadline: no frame (a DATA frame or the server's
    HEARTBEAT) for ``liveness`` seconds (``IG_STREAM_LIVENESS``) ends it with a
    retryable ``RequestTimeoutError`` (phase ``idle``); one task checks all streams, so
    frames pay for no timer. While NATS is down a new request waits for the connection,
    and after a reconnect a "no responders" answer is retried, both for up to
    ``outage_wait`` seconds (``IG_OUTAGE_WAIT``): the servers subscribe again after
    their own reconnect.
    """

    def __init__(
        self,
        nc: NATS,
        namespace: str,
        component: str,
        *,
        liveness: float = _DEFAULTS.stream_liveness,
        outage_wait: float = _DEFAULTS.outage_wait,
    ):
        self._nc = nc
        self.namespace = namespace
        self.component = component
        self.liveness = liveness
        self.outage_wait = outage_wait
        self._reconnects = 0  # nats-py's reconnect count when last looked at
        self._outage_seen = -math.inf  # time.monotonic() NATS was last seen down or reconnected
        self._liveness_task: asyncio.Task[None] | None = None
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

        ``idle_timeout``: a per-call limit between frames instead of the client's liveness
        deadline (one timer per frame; tests and short calls).

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
        st = _Stream(
            subject,
            f"{self._inbox_prefix}.{token}",
            instance_id,
            token=token,
            own_limit=idle_timeout is not None,
        )
        self._streams[token] = st
        data = _FrameKind.DATA
        try:
            await self._request(st, payload, ack_timeout)
            queue = st.queue  # (a request sent again has a new reply subject and queue)
            expected = 1
            held: _Item | None = None  # an item taken from the queue behind a batch, handled next
            while True:
                if held is None:
                    frame = await self._next(st, idle_timeout, "idle")
                else:
                    frame, held = self._unwrap(st, held), None
                if frame.seq != expected:
                    if frame.kind == _FrameKind.HEARTBEAT and frame.seq < expected:
                        continue  # alive, and every frame it sent has arrived
                    if frame.kind == _FrameKind.HEARTBEAT:
                        raise FramesLostError(subject, expected, frame.seq, st.serving)
                    if frame.seq > expected:
                        raise FramesLostError(subject, expected, frame.seq - 1, st.serving)
                    raise ProtocolError(subject, f"frame seq {frame.seq}, expected {expected}")
                if frame.kind == _FrameKind.HEARTBEAT:  # it says frame ``expected`` was sent: lost
                    raise FramesLostError(subject, expected, frame.seq, st.serving)
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
            self._streams.pop(st.token, None)
            if not st.finished:
                if st.instance_id:
                    await self._send_cancel(st.instance_id, st.reply)
                else:  # gave up before the ACK: cancel once we learn who took it
                    self._remember_abandoned(st.token, st.reply)

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
        await _cancel(self._liveness_task)
        self._liveness_task = None
        await _unsubscribe(self._reply_sub)
        self._reply_sub = None

    # -- internals

    async def _ensure_reply_sub(self) -> None:
        if self._reply_sub is None:
            async with self._sub_lock:
                if self._reply_sub is None:
                    self._reply_sub = await self._nc.subscribe(f"{self._inbox_prefix}.*", cb=self._on_reply)
                    self._liveness_task = asyncio.get_running_loop().create_task(
                        self._check_liveness(), name=f"liveness {self.component}"
                    )

    async def _request(self, st: _Stream, payload: bytes, ack_timeout: float) -> None:
        """Publish the request and take its ACK; wait out a NATS outage (up to ``outage_wait``).

        Nothing was accepted before an ACK, so a request that found no responders may be
        sent again: after a reconnect the servers subscribe again after their own.
        """
        deadline = time.monotonic() + self.outage_wait
        delay = _RETRY_MIN
        resends = 0
        while True:
            while not _connected(self._nc):  # publish now and the ACK timer runs out while NATS is down
                self._outage_seen = time.monotonic()
                if self._nc.is_closed:
                    raise ClientClosedError("the NATS connection is closed")
                if self._outage_seen >= deadline:
                    raise RequestTimeoutError(st.subject, "connect", self.outage_wait, st.serving)
                await asyncio.sleep(_RETRY_MIN)  # polls nats-py's state; it has no awaitable for it
            await self._nc.publish(st.subject, payload, reply=st.reply)
            try:
                ack = await self._await_ack(st, ack_timeout)
            except NoRespondersError:
                if not self._outage_recent() or time.monotonic() + delay > deadline:
                    raise
                st.finished = False
                await asyncio.sleep(delay)  # retry backoff
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if ack is None:  # the connection dropped: the request, or its ACK, may be lost
                if resends >= _MAX_RESENDS:
                    raise RequestTimeoutError(st.subject, "connect", self.outage_wait, st.serving)
                resends += 1
                deadline = time.monotonic() + self.outage_wait
                self._renew_reply(st)
                continue
            if ack.kind == _FrameKind.ACK and ack.seq == 0:
                st.acked, st.last_frame = True, time.monotonic()
                return
            if ack.kind in (_FrameKind.DATA, _FrameKind.HEARTBEAT, _FrameKind.END):  # the ACK was lost
                st.instance_id = st.instance_id or ack.instance_id
                raise FramesLostError(st.subject, 0, max(0, ack.seq - 1), st.serving)
            self._raise_unexpected(st, ack, "ACK")

    async def _await_ack(self, st: _Stream, ack_timeout: float) -> wire.ResponseFrame | None:
        """The ACK (or the first frame), or None when the connection dropped meanwhile."""
        reconnects = self._nc.stats["reconnects"]
        limit = time.monotonic() + ack_timeout
        while True:
            if not st.queue.empty():
                return self._unwrap(st, st.queue.get_nowait())
            if not _connected(self._nc) or self._nc.stats["reconnects"] != reconnects:
                self._outage_seen = time.monotonic()
                return None
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(st.subject, "ack", ack_timeout, st.serving)
            try:
                async with asyncio.timeout(min(remaining, _ACK_CHECK)):
                    return self._unwrap(st, await st.queue.get())
            except TimeoutError:
                continue  # look at the connection again

    def _renew_reply(self, st: _Stream) -> None:
        """Send the request again on a new reply subject; the old one is abandoned (a late ACK
        on it gets a cancel, so the request does not run twice)."""
        self._streams.pop(st.token, None)
        self._remember_abandoned(st.token, st.reply)
        st.token = secrets.token_hex(8)
        st.reply = f"{self._inbox_prefix}.{st.token}"
        st.queue = asyncio.Queue()
        self._streams[st.token] = st

    def _outage_recent(self) -> bool:
        """NATS was down, or reconnected, less than ``outage_wait`` seconds ago."""
        reconnects = self._nc.stats["reconnects"]
        now = time.monotonic()
        if reconnects != self._reconnects or not _connected(self._nc):
            self._reconnects, self._outage_seen = reconnects, now
        return now - self._outage_seen < self.outage_wait

    async def _check_liveness(self) -> None:
        """Fail each stream past its ACK that got no frame for ``liveness`` seconds."""
        while True:
            await asyncio.sleep(self.liveness / 4)  # the check's period, not synchronisation
            limit = time.monotonic() - self.liveness
            for st in list(self._streams.values()):
                if st.acked and not (st.expired or st.finished or st.own_limit) and st.last_frame < limit:
                    st.expired = True
                    st.queue.put_nowait(RequestTimeoutError(st.subject, "idle", self.liveness, st.serving))

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
        st.last_frame = time.monotonic()
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


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait until it has ended."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _unsubscribe(sub: Subscription | None) -> None:
    """Drop a subscription while closing; the connection may already be gone, which is fine then."""
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
