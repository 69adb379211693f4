"""What the benchmarks here share: the output options, one percentile, one table, the JSON record,
prompts of an exact token count, and servers run as process trees whose CPU time is read from /proc.

Every script prints its results as a Markdown table (the format of docs/benchmarks.md) and writes
``bench/results/<benchmark>[-<label>]-<time>.json`` (gitignored; ``--json PATH`` writes a copy) with
the arguments, the commit and the machine next to its numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- arguments and output


def output_args(p: argparse.ArgumentParser, label: str = "") -> None:
    p.add_argument("--label", default=label, help="names the JSON file (and the logs) of this run")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the JSON results here")


def int_list(text: str) -> list[int]:
    """``--concurrency 1,8,32``: positive integers, comma-separated."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank: the smallest value with a share ``q`` of the
    values below it. NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, padded to line up on stdout (first column left, the others right)."""
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def git() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    changed = run("status", "--porcelain").splitlines()
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(changed), "changed": changed[:50]}


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
    }


def write_json(benchmark: str, args: argparse.Namespace, results: dict[str, Any]) -> Path:
    """``results`` with the run's metadata, to bench/results/ (and ``--json``); returns the path."""
    now = dt.datetime.now(dt.UTC)
    label = getattr(args, "label", "")
    record = {
        "benchmark": benchmark,
        "label": label,
        "time": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(args).items() if k != "json_path"},
        "git": git(),
        "machine": machine(),
        **results,
    }
    payload = json.dumps(record, indent=2, default=str)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{benchmark}{'-' + label if label else ''}-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(payload)
    print(f"wrote {path.relative_to(ROOT)}")
    if getattr(args, "json_path", None):
        Path(args.json_path).write_text(payload)
        print(f"wrote {args.json_path}")
    return path


# ---------------------------------------------------------------- prompts


def build_prompts(model_path: str, count: int, n_tokens: int, seed: int) -> list[str]:
    """``count`` different texts of exactly ``n_tokens`` tokens each (random plain words, so no
    two share a first KV block: no prefix-cache hits)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    ids = [tok.token_to_id(w) for w in sorted(tok.get_vocab()) if re.fullmatch(r"Ġ[a-z]{3,9}", w)]
    if len(ids) < 100:
        raise SystemExit("the tokenizer has too few plain word tokens to build prompts")
    rng = random.Random(seed)
    prompts: dict[str, None] = {}
    while len(prompts) < count:
        text = tok.decode(rng.choices(ids, k=n_tokens)).strip()
        if len(tok.encode(text).ids) == n_tokens:
            prompts[text] = None
    return list(prompts)


# ---------------------------------------------------------------- processes and their CPU time

# A process's role, from its command line; the first needle found wins.
ROLES = (
    ("EngineCore", "engine_core"),  # vLLM's engine core process names itself VLLM::EngineCore
    ("roles.frontend", "frontend"),
    ("roles.processor", "processor"),
    ("roles.worker", "worker"),
    ("nats-server", "nats-server"),
    ("etcd", "etcd"),
    ("vllm.entrypoints", "api_server"),
    ("inference-graph", "launcher"),
    ("inference_graph.launcher", "launcher"),
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace("\0", " ")


def _stat(pid: int) -> list[str]:
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rindex(")") + 2 :].split() if stat else []


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK if fields else None


def started_at(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (tells a pid's reuse apart)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def role_of(pid: int, parent_role: str = "") -> str:
    cmd = cmdline(pid)
    for needle, role in ROLES:
        if needle in cmd:
            return role
    # vLLM's engine core before it renames itself: a multiprocessing child of a worker or API server.
    if parent_role in ("worker", "api_server") and "multiprocessing" in cmd:
        return "engine_core"
    return "other"


def process_tree(root: int) -> dict[int, str]:
    """pid -> role of ``root`` and all its descendants (walked parent -> child)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (fields := _stat(int(d))):
            children.setdefault(int(fields[1]), []).append(int(d))
    out: dict[int, str] = {}
    todo = [(root, "")]
    while todo:
        pid, parent_role = todo.pop()
        out[pid] = role = role_of(pid, parent_role)
        todo += [(c, role) for c in children.get(pid, ())]
    return out


def machine_busy() -> tuple[float, float]:
    """Busy CPU seconds of the machine since boot (idle, iowait and steal excluded), and steal
    seconds (the hypervisor running someone else on our virtual CPUs)."""
    vals = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    steal = vals[7] if len(vals) > 7 else 0
    return (sum(vals[:8]) - vals[3] - vals[4] - steal) / TICK, steal / TICK


class CpuMeter:
    """CPU seconds of each role of ``pids`` (pid -> role) over a window, of this process, and of
    everything else on the machine (``foreign``: the noise this reports rather than removes)."""

    def __init__(self, pids: dict[int, str]) -> None:
        self.pids = pids
        self.result: dict[str, Any] = {}

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.busy0 = machine_busy()
        self.start = {pid: cpu_seconds(pid) for pid in self.pids}
        self.self0 = cpu_seconds(os.getpid())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        busy1, steal1 = machine_busy()
        by_role: dict[str, float] = {}
        for pid, role in self.pids.items():
            end, start = cpu_seconds(pid), self.start[pid]
            if end is not None and start is not None:
                by_role[role] = by_role.get(role, 0.0) + end - start
        client = cpu_seconds(os.getpid()) - self.self0
        busy = busy1 - self.busy0[0]
        self.result = {
            "wall_s": wall,
            "cpu_s_by_process": {k: round(v, 3) for k, v in sorted(by_role.items())},
            "cpu_s_client": round(client, 3),
            "machine_busy_cores": round(busy / wall, 3),
            "foreign_busy_cores": round(max(0.0, busy - sum(by_role.values()) - client) / wall, 3),
            "steal_cores": round((steal1 - self.busy0[1]) / wall, 3),
        }


class Server:
    """A server started in its own session, logging to ``log``; ready when ``GET /health`` answers
    200. ``stop`` (also on errors and Ctrl-C) SIGTERMs the group, waits, then kills the group and
    any process of its tree left over."""

    def __init__(self, name: str, argv: list[str], log: Path, port: int, env: dict[str, str] | None = None):
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 600.0) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{self.name}] starting: {' '.join(self.argv)}\n  log: {self.log}", flush=True)
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        t0 = time.monotonic()
        while time.monotonic() < t0 + timeout:
            if (code := self.proc.poll()) is not None:
                self.stop()
                raise SystemExit(f"{self.name} exited ({code}); see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = round(time.monotonic() - t0, 1)
                        print(f"  [{self.name}] ready in {self.startup_s} s", flush=True)
                        return self
            except OSError:
                pass
            time.sleep(0.3)  # polling /health, with a deadline
        self.stop()
        raise SystemExit(f"{self.name} not ready within {timeout:.0f} s; see {self.log}")

    def processes(self) -> dict[int, str]:
        return process_tree(self.proc.pid) if self.proc else {}

    def stop(self, grace: float = 90.0) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        tree = {pid: started_at(pid) for pid in process_tree(proc.pid)}
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            print(f"  {self.name}: not stopped after {grace:.0f} s, killing", flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # The roles live in sessions of their own and stop when the launcher does; whatever of
        # the tree is still here after 10 s (the same process: same start time) is killed.
        deadline = time.monotonic() + 10
        while (alive := [p for p, t in tree.items() if started_at(p) == t]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
