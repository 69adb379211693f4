"""Make an engine's child processes die with the process that started them.

vLLM's ``AsyncLLM`` always runs its engine core in a child process, and that
child does not notice its parent dying: after a ``SIGKILL`` of the worker it
keeps running (and polling, ~20% CPU) forever, holding its KV cache memory.
``ChildGuard`` starts a tiny watchdog process (stdlib only, ~10 MB) that learns
the pids to protect over a pipe. When the pipe reaches EOF without a
``release`` line, or its parent pid changes, the parent is gone: the watchdog
sends SIGTERM to each watched process and its descendants, then SIGKILL to
whatever is left after a grace period, and deletes the temp paths it was
given. A clean ``shutdown`` releases it first.

Start times from ``/proc/<pid>/stat`` guard against killing a recycled pid.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

_WATCHDOG = r"""
import os, select, shutil, signal, sys, time

signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the group must not stop the guard
parent = int(sys.argv[1])
grace = float(sys.argv[2])
watched = {}
paths = []

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None

def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids

def targets():
    kids = children_map()
    found, todo = set(), [p for p, t in watched.items() if start_time(p) == t]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(kids.get(pid, []))
    return found

def kill_all():
    pids = targets()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(start_time(p) for p in pids):
        time.sleep(0.1)
    for pid in pids | targets():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)

buf = b""
while True:
    ready, _, _ = select.select([0], [], [], 1.0)
    if os.getppid() != parent:
        kill_all()
        sys.exit(0)
    if not ready:
        continue
    chunk = os.read(0, 4096)
    if not chunk:
        kill_all()
        sys.exit(0)
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        cmd, _, arg = line.decode().partition(" ")
        if cmd == "release":
            sys.exit(0)
        if cmd == "remove" and arg:
            paths.append(arg)
        if cmd == "watch" and arg.isdigit():
            t = start_time(int(arg))
            if t is not None:
                watched[int(arg)] = t
"""


class ChildGuard:
    """Kills the watched processes (and their descendants) if this process dies."""

    def __init__(self, grace_s: float = 5.0):
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
        self._watched: set[int] = set()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def watch(self, pid: int) -> None:
        if pid in self._watched or self._proc.stdin is None:
            return
        self._watched.add(pid)
        self._send(f"watch {pid}")

    def remove_on_death(self, path: str) -> None:
        """Delete ``path`` (a private temp dir) too if this process dies."""
        self._send(f"remove {path}")

    def _send(self, line: str) -> None:
        if self._proc.stdin is None or "\n" in line:
            return
        try:
            self._proc.stdin.write(f"{line}\n".encode())
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the guard died, or the pipe is closed
            log.warning("child guard %d is gone; cannot send %r", self._proc.pid, line)

    def terminate_watched(self) -> None:
        """Stop the watched processes now (as if this process had died) and end the guard."""
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()  # EOF without "release": the guard kills
            except (OSError, ValueError):
                pass
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def release(self) -> None:
        """Stop guarding (after the children were shut down cleanly)."""
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.write(b"release\n")
                self._proc.stdin.close()
            except (OSError, ValueError):
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
