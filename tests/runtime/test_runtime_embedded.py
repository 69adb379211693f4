"""The embedded servers start, answer, and leave nothing behind."""

import asyncio
import os
import signal
import subprocess
import sys

import nats
import pytest

from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.embedded import EmbeddedEtcd, EmbeddedNats, EmbeddedServerError
from support import eventually, eventually_sync


def _state(pid: int) -> str | None:
    """The process's state letter (``Z``: a zombie nobody reaped yet), None once it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0]
    except FileNotFoundError:
        return None


def _left_nothing(pid: int | None, tmpdir: str) -> bool:
    """The process is reaped (not even a zombie) and the temp dir is gone."""
    return (pid is None or not os.path.exists(f"/proc/{pid}")) and not os.path.exists(tmpdir)


async def test_nats_starts_answers_and_stops_cleanly():
    async with EmbeddedNats() as server:
        pid, tmpdir = server.pid, server.tmpdir
        nc = await nats.connect(server.url)
        sub = await nc.subscribe("x")
        await nc.publish("x", b"hi")
        assert (await sub.next_msg(timeout=2)).data == b"hi"
        assert (await nc.jetstream().account_info()) is not None  # JetStream is on
        await nc.close()
    assert _left_nothing(pid, tmpdir)
    assert server.pid is None


async def test_etcd_starts_answers_and_stops_cleanly():
    server = EmbeddedEtcd()
    await server.astart()
    pid, tmpdir = server.pid, server.tmpdir
    disc = await Discovery.connect(server.endpoints)
    await disc.client.put(b"/k", b"v")
    assert (await disc.client.get(b"/k")).value == b"v"
    await disc.close()
    await server.astop()
    assert _left_nothing(pid, tmpdir)


def test_sync_context_manager_and_second_stop_is_harmless():
    with EmbeddedNats(jetstream=False) as server:
        assert server.url.startswith("nats://127.0.0.1:")
        pid = server.pid
    server.stop()
    assert not os.path.exists(f"/proc/{pid}")


_PARENT = """
import sys, time
from inference_graph.runtime.embedded import EmbeddedNats
s = EmbeddedNats(jetstream=False).start()
print(s.pid, s.tmpdir, flush=True)
time.sleep(60)
"""


def test_server_dies_with_its_parent():
    """PR_SET_PDEATHSIG: a SIGKILLed parent leaves no orphaned server; the next
    server removes the temp dir the dead parent could not."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pid, tmpdir = parent.stdout.readline().split()
        server_pid = int(pid)
        assert os.path.exists(f"/proc/{server_pid}")
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    eventually_sync(
        lambda: _state(server_pid),
        until=lambda state: state in (None, "Z"),
        what=f"server {server_pid} to exit",
    )
    assert os.path.exists(tmpdir)
    EmbeddedNats(jetstream=False).stop()  # constructing one sweeps stale dirs
    assert not os.path.exists(tmpdir)


async def test_startup_failure_reports_log_tail(tmp_path, monkeypatch):
    bad = tmp_path / "fake-etcd"
    bad.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    bad.chmod(0o755)
    monkeypatch.setenv("IG_ETCD_BIN", str(bad))
    server = EmbeddedEtcd(startup_timeout=5)
    with pytest.raises(EmbeddedServerError, match="exited with 3") as info:
        await server.astart()
    assert "boom: cannot start" in str(info.value)
    server.stop()
    assert _left_nothing(None, server.tmpdir)


async def test_servers_start_while_grpc_is_busy(discovery, namespace):
    """Forking next to live gRPC threads once aborted the child (see embedded.py)."""
    watch = await discovery.watch_instances(namespace)
    for _ in range(10):
        async with EmbeddedNats(jetstream=False) as server:
            assert server.pid is not None
    await watch.close()


@pytest.mark.parametrize("kind", [EmbeddedNats, EmbeddedEtcd])
async def test_keep_running_restarts_a_killed_server_on_its_port_with_its_data(kind):
    """What the launcher does for its embedded servers: a SIGKILLed one comes back where it was."""
    async with kind() as server:
        port, first = server.port, server.pid
        keeper = asyncio.create_task(server.keep_running(interval=0.05))
        try:
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await eventually(
                lambda: (server.pid, server.exited(), server._probe()),
                until=lambda seen: seen[0] != first and seen[1] is None and seen[2],
                timeout=20,
                what="the server to be started again and answer",
            )
            assert server.port == port
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
