"""Streamed RPC over a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import struct
from collections import Counter

import nats
import pytest

from inference_graph import errors, wire
from inference_graph.runtime.embedded import EmbeddedNats
from inference_graph.runtime.errors import (
    FramesLostError,
    InstanceLostError,
    NoRespondersError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
)
from inference_graph.runtime.request_plane import EndpointClient, EndpointServer
from support import eventually

COMPONENT = "decode"


class Servers:
    """Starts EndpointServers on their own connections; stops them all at teardown."""

    def __init__(self, url: str, namespace: str):
        self.url, self.namespace = url, namespace
        self.servers: list[EndpointServer] = []
        self.conns = []

    async def start(self, instance_id: str, handlers: dict) -> EndpointServer:
        nc = await nats.connect(self.url)
        self.conns.append(nc)
        server = EndpointServer(nc, self.namespace, COMPONENT, instance_id)
        for endpoint, handler in handlers.items():
            await server.serve(endpoint, handler)
        self.servers.append(server)
        return server

    async def close(self) -> None:
        for server in self.servers:
            await server.stop(drain_timeout=1)
        for nc in self.conns:
            await nc.close()


@pytest.fixture
async def servers(nats_server, namespace):
    s = Servers(nats_server.url, namespace)
    yield s
    await s.close()


@pytest.fixture
async def client(nc, namespace):
    c = EndpointClient(nc, namespace, COMPONENT)
    yield c
    await c.close()


def whoami(instance_id: str):
    async def handler(payload: bytes):
        yield instance_id.encode()
        yield payload

    return handler


class Hang:
    """A handler that yields once and then waits forever; records that its finally ran."""

    def __init__(self):
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, payload: bytes):
        try:
            yield b"first"
            self.started.set()
            await self.release.wait()
            yield b"last"
        finally:
            self.finished.set()


async def collect(client: EndpointClient, *args, **kwargs) -> list[bytes]:
    return [chunk async for chunk in client.stream(*args, **kwargs)]


async def test_load_balanced_spreads_and_directed_reaches_instance(servers, client):
    await servers.start("s1", {"gen": whoami("s1")})
    await servers.start("s2", {"gen": whoami("s2")})
    results = await asyncio.gather(*(collect(client, "gen", b"p%d" % i) for i in range(40)))
    assert all(r[1] == b"p%d" % i for i, r in enumerate(results))
    counts = Counter(r[0] for r in results)
    assert set(counts) == {b"s1", b"s2"}, counts

    directed = await asyncio.gather(*(collect(client, "gen", b"x", instance_id="s2") for _ in range(10)))
    assert all(r[0] == b"s2" for r in directed)


async def test_error_frames_carry_error_info(servers, client):
    info = errors.invalid_request("prompt too long", param="prompt", code="ctx").info

    async def bad_request(payload: bytes):
        yield b"partial"
        raise errors.ServingError(info)

    async def crash(payload: bytes):
        raise ValueError("kaboom")
        yield b""  # pragma: no cover - makes this an async generator

    await servers.start("s1", {"bad": bad_request, "crash": crash})
    got = []
    with pytest.raises(RemoteError) as exc:
        async for chunk in client.stream("bad", b""):
            got.append(chunk)
    assert got == [b"partial"]
    assert exc.value.info == info and exc.value.instance_id == "s1" and exc.value.status == 400

    with pytest.raises(RemoteError) as exc:
        await collect(client, "crash", b"")
    assert (exc.value.status, exc.value.type) == (500, "server_error") and "kaboom" in exc.value.message


async def test_no_responders_fails_fast(servers, client):
    await servers.start("s1", {"gen": whoami("s1")})
    for kwargs in ({}, {"instance_id": "nobody"}):
        endpoint = "gen" if kwargs else "missing"
        # NATS answers "no responders" at once; waiting for the ACK would end in RequestTimeoutError
        # (and with an hour's ack_timeout, in the suite's timeout), never in NoRespondersError.
        with pytest.raises(NoRespondersError):
            await collect(client, endpoint, b"", ack_timeout=3600, **kwargs)


async def test_consumer_early_exit_cancels_the_handler(servers, client):
    hang = Hang()
    await servers.start("s1", {"gen": hang})
    async with contextlib.aclosing(client.stream("gen", b"")) as stream:
        async for chunk in stream:
            assert chunk == b"first"
            break
    await asyncio.wait_for(hang.finished.wait(), 2)
    assert client.in_flight == 0


async def test_cancelled_consumer_task_cancels_the_handler(servers, client):
    hang = Hang()
    await servers.start("s1", {"gen": hang})
    task = asyncio.create_task(collect(client, "gen", b""))
    await asyncio.wait_for(hang.started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(hang.finished.wait(), 2)


async def test_instance_lost_fails_in_flight_stream_promptly(servers, client):
    await servers.start("s1", {"gen": Hang()})
    stream = client.stream("gen", b"")
    assert await anext(stream) == b"first"
    task = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)  # one turn of the loop: the task now waits for the next frame
    client.on_instance_event("removed", wire.InstanceInfo(instance_id="s1", namespace="", component=""))
    # Promptly: the loss is handed to the waiting stream directly, so it fails within two turns
    # of the event loop, with no network round trip, timer or idle timeout involved.
    for _ in range(2):
        await asyncio.sleep(0)
    assert task.done(), "the stream still waits for a frame from the lost instance"
    with pytest.raises(InstanceLostError) as exc:
        task.result()
    assert exc.value.instance_id == "s1"
    assert client.instance_lost("s1") == 0  # nothing left in flight


async def test_ack_from_an_already_lost_instance_fails_the_stream(servers, client):
    """The loss notice can overtake the ACK; the stream must not wait for a dead instance."""
    await servers.start("s1", {"gen": Hang()})
    client.instance_lost("s1")
    with pytest.raises(InstanceLostError):
        await asyncio.wait_for(collect(client, "gen", b""), 2)


async def test_stop_drains_in_flight_then_refuses(servers, client):
    hang = Hang()
    server = await servers.start("s1", {"gen": hang})
    stream = client.stream("gen", b"")
    assert await anext(stream) == b"first"
    await asyncio.wait_for(hang.started.wait(), 2)

    stopping = asyncio.create_task(server.stop(drain_timeout=10))
    await asyncio.wait_for(server.closed_to_new_requests.wait(), 2)
    with pytest.raises(NoRespondersError):  # no longer takes new requests
        await collect(client, "gen", b"")
    assert not stopping.done()  # ...but still serves the one in flight
    hang.release.set()
    assert [chunk async for chunk in stream] == [b"last"]
    await asyncio.wait_for(stopping, 2)


async def test_stop_deadline_cancels_streams_with_503(servers, client):
    hang = Hang()
    server = await servers.start("s1", {"gen": hang})
    task = asyncio.create_task(collect(client, "gen", b""))
    await asyncio.wait_for(hang.started.wait(), 2)
    await server.stop(drain_timeout=0.1)
    assert hang.finished.is_set()
    with pytest.raises(RemoteError) as exc:
        await task
    assert exc.value.status == 503


async def test_ack_and_idle_timeouts(servers, client, nc, namespace):
    mute = await nc.subscribe(f"ig.{namespace}.{COMPONENT}.mute")  # takes requests, never answers
    with pytest.raises(RequestTimeoutError) as exc:
        await collect(client, "mute", b"", ack_timeout=0.2)
    assert exc.value.phase == "ack"
    await mute.unsubscribe()

    hang = Hang()
    await servers.start("s1", {"gen": hang})
    with pytest.raises(RequestTimeoutError) as exc:
        await collect(client, "gen", b"", idle_timeout=0.2)
    assert exc.value.phase == "idle" and exc.value.instance_id == "s1"
    await asyncio.wait_for(hang.finished.wait(), 2)  # the remote stream was cancelled


async def test_sequence_gap_is_frames_lost_and_retryable_a_repeat_is_a_protocol_error(client, nc, namespace):
    """A gap means the transport lost frames (a NATS restart): retryable, so the processor migrates."""
    enc = wire.encoder.encode

    def serve(subject, frames):
        async def server(msg):
            await nc.publish(msg.reply, enc(wire.ResponseFrame(wire.FrameKind.ACK, 0, instance_id="raw")))
            for frame in frames:
                await nc.publish(msg.reply, enc(frame))

        return nc.subscribe(f"ig.{namespace}.{COMPONENT}.{subject}", cb=server)

    data = wire.FrameKind.DATA
    await serve("gappy", [wire.ResponseFrame(data, 2, payload=b"x")])
    await serve(
        "repeat", [wire.ResponseFrame(data, 1, payload=b"x"), wire.ResponseFrame(data, 1, payload=b"x")]
    )
    with pytest.raises(FramesLostError, match=r"frames 1\.\.1 .* lost") as exc:
        await collect(client, "gappy", b"")
    assert exc.value.retryable and exc.value.status == 503
    with pytest.raises(ProtocolError, match="expected 2"):
        await collect(client, "repeat", b"")


async def test_a_heartbeat_ahead_of_the_frames_received_means_frames_lost(client, nc, namespace):
    """A heartbeat names the last frame sent: behind it, the stream goes on; ahead, frames were lost."""
    enc = wire.encoder.encode
    kind = wire.FrameKind

    async def server(msg):
        frames = [
            wire.ResponseFrame(kind.ACK, 0, instance_id="raw"),
            wire.ResponseFrame(kind.HEARTBEAT, 0, instance_id="raw"),  # in step: nothing sent yet
            wire.ResponseFrame(kind.DATA, 1, payload=b"a"),
            wire.ResponseFrame(kind.HEARTBEAT, 1, instance_id="raw"),  # in step
            wire.ResponseFrame(kind.HEARTBEAT, 3, instance_id="raw"),  # 2 and 3 never arrived
        ]
        for frame in frames:
            await nc.publish(msg.reply, enc(frame))

    await nc.subscribe(f"ig.{namespace}.{COMPONENT}.beats", cb=server)
    received = []
    with pytest.raises(FramesLostError, match=r"frames 2\.\.3"):
        async for chunk in client.stream("beats", b""):
            received.append(chunk)
    assert received == [b"a"]


@pytest.mark.timeout(30)  # a frame that waited for a timer would never come: this timeout fails it
async def test_frames_are_delivered_without_a_timer(servers, client, monkeypatch):
    """Frames are flushed at once: nats-py's flusher adds no timer delay per frame.

    The event loop's clock stands still for the whole test, so no timer (call_later,
    asyncio.sleep(d), a flush interval) ever fires: every frame must travel on I/O
    readiness alone. Ping-pong: the handler sends the next frame only after the client
    got the last one, so no frame can ride along with a later flush. Then a burst, then
    whole small requests back to back. (bench/request_path.py measures the latencies.)
    """
    n = 200
    got = asyncio.Event()

    async def pingpong(payload: bytes):
        for i in range(n):
            got.clear()
            yield struct.pack("I", i)
            await got.wait()

    async def burst(payload: bytes):
        for i in range(5000):
            yield b"x" * 32
            if i % 16 == 0:
                await asyncio.sleep(0)  # an engine step boundary

    await servers.start("s1", {"pingpong": pingpong, "burst": burst, "echo": whoami("s1")})
    loop = asyncio.get_running_loop()
    frozen = loop.time()
    monkeypatch.setattr(loop, "time", lambda: frozen)
    received = []
    async for chunk in client.stream("pingpong", b""):
        received.append(struct.unpack("I", chunk)[0])
        got.set()
    assert received == list(range(n))
    assert len(await collect(client, "burst", b"")) == 5000
    for _ in range(50):
        assert await collect(client, "echo", b"x") == [b"s1", b"x"]
    assert loop.time() == frozen  # (the clock really stood still)


async def test_stream_batches_groups_frames_that_already_arrived(client, nc, namespace):
    """Frames queued before the caller reads come as one list, in order; END or ERROR
    behind them comes after them; a caller that keeps up gets one payload per list."""
    enc = wire.encoder.encode
    info = errors.invalid_request("bad").info

    release = asyncio.Event()  # the server sends frame 1, then the rest once the caller has read it

    async def burst(msg):
        frames = [wire.ResponseFrame(wire.FrameKind.ACK, 0, instance_id="raw")]
        frames += [wire.ResponseFrame(wire.FrameKind.DATA, i, payload=b"%d" % i) for i in range(1, 6)]
        last = wire.ResponseFrame(wire.FrameKind.END, 6)
        if msg.data == b"error":
            last = wire.ResponseFrame(wire.FrameKind.ERROR, 6, error=info)
        for frame in frames[:2]:
            await nc.publish(msg.reply, enc(frame))
        await release.wait()
        for frame in [*frames[2:], last]:
            await nc.publish(msg.reply, enc(frame))

    def queued() -> int:
        """Frames that reached the caller's queue and wait there to be read."""
        return sum(st.queue.qsize() for st in client._streams.values())

    async def lag() -> None:
        """The caller lags: it reads on only once DATA 2-5 and the END (or ERROR) have arrived."""
        release.set()
        await eventually(queued, until=lambda n: n == 5, what="the rest of the stream to arrive")
        release.clear()

    await nc.subscribe(f"ig.{namespace}.{COMPONENT}.burst", cb=burst)
    batches = []
    async for batch in client.stream_batches("burst", b"ok"):
        batches.append(batch)
        if len(batches) == 1:
            await lag()
    assert batches == [[b"1"], [b"2", b"3", b"4", b"5"]]  # what queued up came as one list, in order

    batches = []
    with pytest.raises(RemoteError) as exc:
        async for batch in client.stream_batches("burst", b"error"):
            batches.append(batch)
            if len(batches) == 1:
                await lag()
    assert batches == [[b"1"], [b"2", b"3", b"4", b"5"]] and exc.value.info == info  # ERROR came last

    release.set()

    # The flat stream yields the same payloads one by one.
    assert await collect(client, "burst", b"ok") == [b"1", b"2", b"3", b"4", b"5"]


async def test_a_stream_silent_past_the_liveness_deadline_ends_with_a_retryable_error(nc, namespace):
    """No frame and no heartbeat for ``liveness`` s: the stream ends (a lost END would hang it forever)."""
    enc = wire.encoder.encode

    async def ack_then_silence(msg):
        await nc.publish(msg.reply, enc(wire.ResponseFrame(wire.FrameKind.ACK, 0, instance_id="mute")))

    await nc.subscribe(f"ig.{namespace}.{COMPONENT}.silent", cb=ack_then_silence)
    client = EndpointClient(nc, namespace, COMPONENT, liveness=0.4)
    try:
        with pytest.raises(RequestTimeoutError) as exc:
            async with asyncio.timeout(10):  # the guard; the deadline (0.4 s, checked every 0.1 s) ends it
                await collect(client, "silent", b"")
    finally:
        await client.close()
    assert exc.value.phase == "idle" and exc.value.instance_id == "mute"
    assert exc.value.retryable and exc.value.status == 504  # so the processor migrates the stream
    assert "no frame and no heartbeat within 0.4s" in exc.value.message


async def test_heartbeats_keep_a_healthy_stream_alive_through_a_silent_phase(nats_server, nc, namespace):
    """A handler silent for twice the liveness deadline (a queued request, a long prefill) is not cut off."""
    release = asyncio.Event()

    async def slow(payload: bytes):
        yield b"queued"
        await release.wait()
        yield b"done"

    server_nc = await nats.connect(nats_server.url)
    server = EndpointServer(server_nc, namespace, COMPONENT, "s1", liveness=0.4)
    sent: Counter = Counter()
    send = server._send

    async def counting(reply, frame):
        sent[frame.kind] += 1
        await send(reply, frame)

    server._send = counting  # type: ignore[method-assign]
    await server.serve("slow", slow)
    client = EndpointClient(nc, namespace, COMPONENT, liveness=0.4)
    try:
        task = asyncio.create_task(collect(client, "slow", b""))
        # 8 heartbeats, one every 0.1 s: the handler has been silent for twice the deadline
        await eventually(lambda: sent[wire.FrameKind.HEARTBEAT], until=lambda n: n >= 8, timeout=10)
        assert not task.done()
        release.set()
        assert await task == [b"queued", b"done"]
    finally:
        await client.close()
        await server.stop(drain_timeout=1)
        await server_nc.close()


async def test_a_request_during_a_nats_outage_waits_for_nats_and_for_its_responder(namespace):
    """Sent while NATS is down, a request waits for the connection; after the reconnect, "no
    responders" (its server has not subscribed again yet) is retried until it has."""
    async with EmbeddedNats() as server_process:
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.1}
        client_nc = await nats.connect(server_process.url, **options)
        client = EndpointClient(client_nc, namespace, COMPONENT, outage_wait=30)
        # The first server does not reconnect: it stands for one that subscribes again later.
        before_nc = await nats.connect(server_process.url, allow_reconnect=False)
        before = EndpointServer(before_nc, namespace, COMPONENT, "before")
        await before.serve("gen", whoami("before"))
        servers = Servers(server_process.url, namespace)
        try:
            assert await collect(client, "gen", b"x") == [b"before", b"x"]
            os.kill(server_process.pid, signal.SIGKILL)
            await eventually(lambda: client_nc.is_connected, until=lambda up: not up, what="the disconnect")
            request = asyncio.create_task(collect(client, "gen", b"y"))
            await asyncio.to_thread(server_process.restart)
            await eventually(lambda: client_nc.is_connected, timeout=10, what="the client's reconnect")
            assert not request.done()  # nobody serves "gen" on the new server yet: it waits
            await servers.start("after", {"gen": whoami("after")})
            async with asyncio.timeout(10):
                assert await request == [b"after", b"y"]
        finally:
            await client.close()
            await client_nc.close()
            await servers.close()
            await before.stop(drain_timeout=0)


async def test_a_stream_whose_end_was_lost_in_a_nats_restart_fails_at_once_after_the_reconnect(namespace):
    """The server ends a stream while NATS is down; its last frames reach NATS before the caller has
    subscribed again, so they are dropped. After its reconnect the server heartbeats the streams it
    just ended: the caller learns of the loss long before its liveness deadline (60 s here)."""
    async with EmbeddedNats() as server_process:
        server_nc = await nats.connect(
            server_process.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05
        )
        # The caller comes back later than the server, as one of many roles may: its reconnect
        # attempts are 2 s apart, and NATS restarts right after one of them was refused.
        refused = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            refused.set()

        client_nc = await nats.connect(
            server_process.url, max_reconnect_attempts=-1, reconnect_time_wait=2.0, error_cb=on_error
        )
        hang = Hang()
        server = EndpointServer(server_nc, namespace, COMPONENT, "s1", liveness=4.0)
        await server.serve("gen", hang)
        client = EndpointClient(client_nc, namespace, COMPONENT, liveness=60)
        try:
            stream = client.stream("gen", b"")
            assert await anext(stream) == b"first"
            os.kill(server_process.pid, signal.SIGKILL)
            await eventually(lambda: server_nc.is_connected, until=lambda up: not up, what="the disconnect")
            hang.release.set()  # "last" and END are sent while NATS is down
            await asyncio.wait_for(hang.finished.wait(), 5)
            refused.clear()
            await asyncio.wait_for(refused.wait(), 10)  # the caller's next attempt is 2 s away
            await asyncio.to_thread(server_process.restart)
            await eventually(lambda: server_nc.is_connected, what="the server's reconnect")
            assert not client_nc.is_connected  # "last" and END are flushed now, and dropped
            with pytest.raises(FramesLostError, match=r"frames 2\.\.3"):
                async with asyncio.timeout(10):
                    await anext(stream)
        finally:
            await client.close()
            await server.stop(drain_timeout=0)
            await client_nc.close()
            await server_nc.close()


async def test_a_request_whose_connection_drops_before_its_ack_is_sent_again(namespace):
    """The first copy reached a server but its ACK never came back (NATS died): once NATS is back the
    caller sends the request again, on a new reply subject, and the stream goes on from there."""
    async with EmbeddedNats() as server_process:
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.05}
        server_nc = await nats.connect(server_process.url, **options)
        client_nc = await nats.connect(server_process.url, **options)
        replies: list[str] = []
        enc = wire.encoder.encode

        async def server(msg):
            replies.append(msg.reply)
            if len(replies) == 1:  # the first copy: NATS dies before its ACK goes out
                os.kill(server_process.pid, signal.SIGKILL)
                return
            await server_nc.publish(
                msg.reply, enc(wire.ResponseFrame(wire.FrameKind.ACK, 0, instance_id="s1"))
            )
            await server_nc.publish(msg.reply, enc(wire.ResponseFrame(wire.FrameKind.DATA, 1, payload=b"ok")))
            await server_nc.publish(msg.reply, enc(wire.ResponseFrame(wire.FrameKind.END, 2)))

        await server_nc.subscribe(f"ig.{namespace}.{COMPONENT}.gen", cb=server)
        await server_nc.flush()
        client = EndpointClient(client_nc, namespace, COMPONENT, outage_wait=30)
        try:
            request = asyncio.create_task(collect(client, "gen", b"", ack_timeout=30))
            await eventually(lambda: replies, what="the first copy to reach the server")
            await eventually(lambda: client_nc.is_connected, until=lambda up: not up, what="the disconnect")
            await asyncio.to_thread(server_process.restart)
            async with asyncio.timeout(10):  # long before the 30 s ACK timeout
                assert await request == [b"ok"]
            assert len(replies) == 2 and replies[0] != replies[1]
        finally:
            await client.close()
            await client_nc.close()
            await server_nc.close()


async def test_a_request_from_another_connection_right_after_serve_finds_its_responder(nats_server):
    """serve() returns only once the server has the subscription. nats-py's flush() alone can return
    before a SUB just issued left the client (its PING skips the command buffer): then about 1 in 30
    requests sent at once from another connection got "no responders"; 100 in a row all succeed."""
    client_nc = await nats.connect(nats_server.url)
    try:
        for i in range(100):
            namespace = f"t{secrets.token_hex(4)}"
            server_nc = await nats.connect(nats_server.url)
            server = EndpointServer(server_nc, namespace, COMPONENT, f"s{i}")
            client = EndpointClient(client_nc, namespace, COMPONENT)
            try:
                await server.serve("gen", whoami(f"s{i}"))
                assert await collect(client, "gen", b"x") == [f"s{i}".encode(), b"x"], i
            finally:
                await client.close()
                await server.stop(drain_timeout=0)
                await server_nc.close()
    finally:
        await client_nc.close()
