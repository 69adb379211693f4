"""Runs ``inference-graph serve`` as a user would, for end-to-end tests.

The launcher runs in its own process with real NATS and etcd (started by the
test session, so tests can watch the event plane and discovery too), real role
processes and real vLLM engines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from support import eventually_sync

REPO = Path(__file__).parents[2]


def descendants(pid: int) -> set[int]:
    """Every live process whose parent chain reaches ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces; the fields after ')' are fixed.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class LocalGraph:
    """One ``inference-graph serve`` process and everything it started."""

    def __init__(self, config: str, port: int, overrides: list[str], env: dict[str, str], log_path: Path):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        argv = [
            sys.executable,
            "-m",
            "inference_graph.launcher",
            "serve",
            str(REPO / config),
            "--port",
            str(port),
        ]
        for item in overrides:
            argv += ["--set", item]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return http_status(self.base_url + "/health") == 200

        try:
            eventually_sync(ready, timeout=timeout, interval=0.25, what="the graph to become ready")
        except AssertionError:
            self.stop()
            raise

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM the launcher as Ctrl-C would and wait; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"launcher did not stop within {timeout} s:\n{self.log()[-4000:]}"
                ) from None
        self._log.close()
        return self.proc.returncode
