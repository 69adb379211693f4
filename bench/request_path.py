"""The serving path: what the graph costs per request, alone or next to vLLM's own server.

Two measurements, one load generator:

- default: ``inference-graph serve CONFIG --engine mocker`` with ``engine.mocker.timing=instant``
  (no simulated time: every millisecond is our own serving path: HTTP -> frontend -> NATS ->
  processor -> NATS -> worker) and ``--workers`` decode workers, or a running graph (``--url``;
  its processes are then found by command line). ``--warmup`` seconds of load, then ``--duration``
  seconds measured. CPU is reported per request.
- ``--vllm``: the graph as CONFIG says (a real vLLM worker: ... -> worker (AsyncLLM) -> engine
  core) against ``python -m vllm.entrypoints.openai.api_server`` (HTTP -> api_server -> engine
  core) on the same model directory with the engine arguments and environment our worker gives
  vLLM: the flags are the fields of ``VllmEngine._engine_args`` that differ from vLLM's defaults,
  parsed back with vLLM's own parser and compared field by field before the server starts (in a
  subprocess: it imports vLLM). Each server gets ``--warmup`` seconds of load, then each
  ``--concurrency`` level sends its ``--requests-per-level`` requests (distinct prompts, the same
  for both servers). The servers run one after the other, or with ``--interleave`` both at once,
  each level in blocks that alternate between them (A B B A ...): a paired comparison on a
  machine with other load. CPU is reported per output token, with graph/vLLM ratios.

Load: a closed loop of ``--concurrency`` clients, each on its own keep-alive HTTP/1.1
connection, sending streaming ``/v1/completions`` (``--chat``: chat) with ``ignore_eos``,
``temperature`` 0 and ``--max-tokens`` output tokens. Prompts are distinct texts of exactly
``--prompt-tokens`` tokens (random words: no two share a first KV block). The client is
deliberately cheap (raw asyncio streams on uvloop, no HTTP library, no JSON on the hot path):
it counts SSE ``data:`` events until ``data: [DONE]`` and the end of the chunked body. One
request per server is parsed in full first to check the output (usage).

Per request: TTFT = request written -> first read holding a ``data:`` event; ITL = gaps between
successive reads holding events (an event may carry several tokens when the server coalesces:
``tok/event`` says so); TPOT = (last event - first event) / (tokens - 1); e2e.

CPU: utime+stime from /proc of every process of each server (frontend, processor, worker,
nats-server, etcd, launcher; api_server; vLLM's engine core) and of this client over the
measured window, and the machine's other load (``harness.CpuMeter``). "ours" = frontend +
processor + worker; "serving" = everything on the token path but the engine core.

Output: tables on stdout; JSON in bench/results/request_path-<label>-<time>.json; server logs
in bench/results/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness import (
    RESULTS,
    CpuMeter,
    Server,
    build_prompts,
    cmdline,
    fmt,
    int_list,
    output_args,
    pct,
    process_tree,
    role_of,
    table,
    write_json,
)
from inference_graph.runtime.embedded import free_port

LAUNCHER = [sys.executable, "-m", "inference_graph.launcher"]
# Defaults that differ between the two measurements: (instant engine, --vllm).
DEFAULTS = {
    "concurrency": ([64], [1, 8, 32]),
    "prompt_tokens": (1100, 64),
    "max_tokens": (100, 128),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/agg.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="spec override (repeatable)")
    p.add_argument(
        "--url", help="attach to a running graph (e.g. http://127.0.0.1:8000); instant engine only"
    )
    p.add_argument("--workers", type=int, default=2, help="decode replicas on the instant engine")
    p.add_argument("--vllm", action="store_true", help="the graph as configured against vLLM's own server")
    p.add_argument("--interleave", action="store_true", help="--vllm: both servers up, levels in blocks")
    p.add_argument("--block", type=int, help="requests per block with --interleave (default max(2c, n/8))")
    p.add_argument("--concurrency", type=int_list, help="clients; --vllm: levels (default 64; 1,8,32)")
    p.add_argument(
        "--requests-per-level",
        type=int_list,
        default=[16, 64, 128],
        help="--vllm: one for all levels or one each",
    )
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (instant engine)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--prompt-tokens", type=int, help="default 1100; --vllm: 64")
    p.add_argument("--max-tokens", type=int, help="output tokens (default 100; --vllm: 128)")
    p.add_argument(
        "--prompts", type=int, default=512, help="distinct prompts, cycled (warm-up, instant engine)"
    )
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine-flags", metavar="KV_ENDPOINT", help=argparse.SUPPRESS)
    output_args(p, label="run")
    args = p.parse_args(argv)
    for key, defaults in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, defaults[args.vllm])
    if len(args.requests_per_level) == 1:
        args.requests_per_level *= len(args.concurrency)
    if args.vllm and len(args.requests_per_level) != len(args.concurrency):
        p.error("--requests-per-level needs one value or one per --concurrency level")
    if args.vllm and args.url:
        p.error("--vllm starts both servers; --url attaches to a graph on the instant engine")
    if args.interleave and not args.vllm:
        p.error("--interleave compares two servers: use it with --vllm")
    if args.prompt_tokens < 1 or args.max_tokens < 2:
        p.error("--prompt-tokens must be >= 1 and --max-tokens >= 2")
    return args


# ---------------------------------------------------------------- servers


def load_spec(args: argparse.Namespace):
    from inference_graph.core.spec import load_graph
    from inference_graph.models import resolve_model_source

    graph = load_graph(args.config, args.overrides)
    return graph, resolve_model_source(graph.spec.model.source)


def graph_server(args: argparse.Namespace) -> Server:
    port = free_port()
    argv = [*LAUNCHER, "serve", args.config, "--port", str(port)]
    sets = list(args.overrides)
    if not args.vllm:
        argv += ["--engine", "mocker"]
        sets[:0] = [
            "engine.mocker.timing=instant",
            f"services.decode.replicas={args.workers}",
            f"engine.maxModelLen={max(4096, args.prompt_tokens + args.max_tokens + 64)}",
        ]
    for item in sets:
        argv += ["--set", item]
    return Server("graph", argv, RESULTS / "logs" / f"request_path-{args.label}-graph.log", port)


def attached_processes(url: str) -> dict[int, str]:
    """The process tree of the ``inference-graph serve ... --port P`` serving ``url`` if it runs
    here, else every role process on this machine."""
    port = urlsplit(url).port
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    for pid in pids:
        cmd = cmdline(pid) + " "
        if (
            "inference" in cmd
            and " serve " in cmd
            and f"--port {port} " in cmd
            and role_of(pid) == "launcher"
        ):
            return process_tree(pid)
    print("no launcher found for that port: counting every role process on this machine", file=sys.stderr)
    return {pid: role for pid in pids if (role := role_of(pid)) not in ("launcher", "other")}


def worker_env(graph, model_path: str) -> dict[str, str]:
    """The environment vLLM sees in our worker: ours + the decode service's env + what
    ``VllmEngine`` sets with ``setdefault`` (its own code)."""
    from inference_graph.engines.vllm_engine import _set_process_env

    saved = dict(os.environ)
    try:
        os.environ.update(graph.spec.services.decode.env)
        _set_process_env(model_path)
        return dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def engine_flags(args: argparse.Namespace, kv_endpoint: str) -> dict[str, Any]:
    """``VllmEngine._engine_args`` as vLLM CLI flags: every ``AsyncEngineArgs`` field that differs
    from vLLM's default (model and served name apart); then that command line parsed back with
    vLLM's own parser and compared field by field. Imports vLLM: run in a subprocess."""
    graph, model_path = load_spec(args)
    os.environ.update(worker_env(graph, model_path))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from inference_graph.engines.factory import create_engine

    ours = create_engine(graph.spec.engine, model_path, graph.spec.model.name)._engine_args(kv_endpoint)
    fields = dataclasses.fields(AsyncEngineArgs)
    flags: list[str] = []
    for f in fields:
        value = getattr(ours, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name in ("model", "served_model_name") or value == default:
            continue
        flag = f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif dataclasses.is_dataclass(value) or isinstance(value, dict | list):
            flags += [
                f"--{flag}",
                json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value),
            ]
        else:
            flags += [f"--{flag}", str(value)]
    argv = ["--model", model_path, "--served-model-name", graph.spec.model.name, *flags]
    cli = AsyncEngineArgs.from_cli_args(make_arg_parser(FlexibleArgumentParser()).parse_args(argv))
    diffs = []
    for f in fields:
        a, b = getattr(cli, f.name), getattr(ours, f.name)
        # served_model_name: a list on the CLI; unset on the CLI: vLLM resolves the default later.
        if a == b or (f.name == "served_model_name" and a == [b]) or (a in (None, "") and b == f.default):
            continue
        diffs.append({"field": f.name, "cli": repr(a)[:200], "worker": repr(b)[:200]})
    return {"flags": flags, "diffs": diffs}


def worker_flags(args: argparse.Namespace, kv_endpoint: str) -> list[str]:
    """``engine_flags`` (in a subprocess), which must express the worker's arguments exactly."""
    print("deriving the vLLM server's engine flags from the worker's ...", flush=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--engine-flags",
        kv_endpoint,
        "--config",
        args.config,
    ]
    for item in args.overrides:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"could not derive vLLM's engine flags:\n{proc.stderr[-2000:] or proc.stdout[-2000:]}"
        )
    check = json.loads(lines[-1])
    if check["diffs"]:
        raise SystemExit(f"vLLM's CLI cannot express the worker's engine arguments: {check['diffs']}")
    print(f"  {' '.join(check['flags'])}\n  parsed back: identical (every AsyncEngineArgs field)", flush=True)
    return check["flags"]


# ---------------------------------------------------------------- load


@dataclasses.dataclass
class Stats:
    """Samples of measured requests, in seconds."""

    measuring: bool = False
    done: int = 0
    errors: int = 0
    events: int = 0
    ttft: list[float] = dataclasses.field(default_factory=list)
    itl: list[float] = dataclasses.field(default_factory=list)
    tpot: list[float] = dataclasses.field(default_factory=list)
    e2e: list[float] = dataclasses.field(default_factory=list)

    def add(self, other: Stats) -> None:
        for f in dataclasses.fields(self):
            if f.name != "measuring":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


END = b"\r\n0\r\n\r\n"


def request_bytes(url: str, path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def one(reader, writer, req: bytes, stats: Stats, tokens: int) -> None:
    t0 = time.perf_counter()
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    if int(head[9:12]) != 200:
        if m := re.search(rb"(?i)content-length:\s*(\d+)", head):  # error bodies: small JSON
            await reader.readexactly(int(m.group(1)))
        stats.errors += 1
        return
    first = last = 0.0
    gaps: list[float] = []
    events = 0
    tail = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        now = time.perf_counter()
        buf = tail + chunk
        if n := buf.count(b"data: "):
            events += n
            if first == 0.0:
                first = now
            else:
                gaps.append(now - last)
            last = now
        tail = buf[-8:]
        if buf.endswith(END):
            break
    if stats.measuring:
        stats.done += 1
        stats.events += events - 1  # not [DONE]
        stats.ttft.append(first - t0)
        stats.itl.extend(gaps)
        stats.tpot.append((last - first) / max(1, tokens - 1))
        stats.e2e.append(last - t0)


async def closed_loop(
    url: str,
    reqs: list[bytes],
    concurrency: int,
    tokens: int,
    pids: dict[int, str],
    duration: float | None,
    warmup: float = 0.0,
) -> tuple[Stats, dict[str, Any]]:
    """``concurrency`` clients send ``reqs``: each once, all measured (``duration`` None), or
    cycled, with the ``duration`` seconds after ``warmup`` measured. The CPU of ``pids`` is
    metered over the measured part."""
    u = urlsplit(url)
    stats, stop = Stats(), asyncio.Event()
    todo = iter(reqs) if duration is None else itertools.cycle(reqs)  # shared: each taken once

    async def client() -> None:
        while not stop.is_set():
            reader, writer = await asyncio.open_connection(u.hostname, u.port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for req in todo:
                    await one(reader, writer, req, stats, tokens)
                    if stop.is_set():
                        break
                else:
                    return
            except (OSError, asyncio.IncompleteReadError, ValueError):
                stats.errors += 1  # and a new connection
            finally:
                writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    if duration is None:
        stats.measuring = True
        with CpuMeter(pids) as meter:
            await asyncio.gather(*tasks)
    else:
        await asyncio.sleep(warmup)
        with CpuMeter(pids) as meter:
            stats.measuring = True
            await asyncio.sleep(duration)
            stats.measuring = False
        stop.set()
        await asyncio.wait(tasks, timeout=60)
        for t in tasks:
            t.cancel()
    return stats, meter.result


def merge_cpu(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One window from several (the blocks of an interleaved level): seconds summed, cores averaged."""
    wall = sum(p["wall_s"] for p in parts)
    by_role: dict[str, float] = {}
    for p in parts:
        for k, v in p["cpu_s_by_process"].items():
            by_role[k] = by_role.get(k, 0.0) + v
    cores = ("machine_busy_cores", "foreign_busy_cores", "steal_cores")
    return {
        "wall_s": wall,
        "cpu_s_by_process": {k: round(v, 3) for k, v in sorted(by_role.items())},
        "cpu_s_client": round(sum(p["cpu_s_client"] for p in parts), 3),
        **{k: round(sum(p[k] * p["wall_s"] for p in parts) / wall, 3) for k in cores},
    }


def summarize(stats: Stats, cpu: dict[str, Any], tokens: int) -> dict[str, Any]:
    wall, done = cpu["wall_s"], max(1, stats.done)

    def ms(values: list[float]) -> dict[str, float]:
        return {f"p{round(100 * q)}": 1000 * pct(values, q) for q in (0.5, 0.9, 0.99)}

    per_request = {k: 1000 * v / done for k, v in cpu["cpu_s_by_process"].items()}
    return {
        "requests": stats.done,
        "errors": stats.errors,
        "wall_s": wall,
        "req_per_s": stats.done / wall,
        "output_tok_per_s": stats.done * tokens / wall,
        "tokens_per_request": tokens,
        "events_per_request": stats.events / done,
        "tokens_per_event": tokens * stats.done / max(1, stats.events),
        "ttft_ms": ms(stats.ttft),
        "itl_ms": ms(stats.itl),
        "tpot_ms": ms(stats.tpot),
        "e2e_ms": ms(stats.e2e),
        "cpu": cpu,
        "cpu_ms_per_request": per_request,
        "ours_cpu_ms_per_request": sum(per_request.get(k, 0.0) for k in ("frontend", "processor", "worker")),
        "serving_cpu_ms_per_token": sum(
            v for k, v in per_request.items() if k not in ("engine_core", "etcd", "launcher", "other")
        )
        / tokens,
        "client_cpu_ms_per_request": 1000 * cpu["cpu_s_client"] / done,
    }


def check_output(url: str, path: str, body: dict, tokens: int) -> dict[str, Any]:
    """One request parsed in full: its usage and number of events."""
    body = dict(body, stream_options={"include_usage": True})
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    usage, events = None, 0
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                events += 1
                usage = json.loads(line[6:]).get("usage") or usage
    if not usage or usage["completion_tokens"] != tokens:
        raise SystemExit(f"unexpected output from {url}: usage {usage}, {events} events")
    return {"usage": usage, "events": events}


class Target:
    """A server under load: its URL, processes and prepared requests."""

    def __init__(self, name: str, url: str, pids: dict[int, str], args: argparse.Namespace) -> None:
        self.name, self.url, self.pids, self.args = name, url, pids, args
        self.path = "/v1/chat/completions" if args.chat else "/v1/completions"
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            model = json.load(r)["data"][0]["id"]
        self.base = {"model": model, "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0}

    def body(self, prompt: str) -> dict[str, Any]:
        if self.args.chat:
            return dict(self.base, stream=True, messages=[{"role": "user", "content": prompt}])
        return dict(self.base, stream=True, prompt=prompt)

    def check(self, prompt: str) -> dict[str, Any]:
        return check_output(self.url, self.path, self.body(prompt), self.args.max_tokens)

    async def run(
        self, prompts: list[str], concurrency: int, duration: float | None = None, warmup: float = 0.0
    ):
        reqs = [request_bytes(self.url, self.path, self.body(p)) for p in prompts]
        return await closed_loop(
            self.url, reqs, concurrency, self.args.max_tokens, self.pids, duration, warmup
        )


async def levels(targets: list[Target], args: argparse.Namespace, warm: list[str], measured: list[str]):
    """--vllm: each target warmed up, then every level; with several targets, each level in
    blocks that alternate between them (A B B A ...)."""
    for t in targets:
        stats, _ = await t.run(warm, min(8, max(args.concurrency)), duration=args.warmup)
        print(f"  [{t.name}] warm-up: {args.warmup:.0f} s, {stats.errors} errors", flush=True)
    out: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    pos = 0
    for conc, n in zip(args.concurrency, args.requests_per_level, strict=True):
        prompts, pos = measured[pos : pos + n], pos + n
        size = len(prompts) if len(targets) == 1 else args.block or max(2 * conc, math.ceil(n / 8))
        parts: dict[str, list] = {t.name: [] for t in targets}
        for i in range(0, n, size):
            for t in targets if (i // size) % 2 == 0 else targets[::-1]:
                parts[t.name].append(await t.run(prompts[i : i + size], conc))
        for t in targets:
            stats = Stats()
            for s, _ in parts[t.name]:
                stats.add(s)
            level = {"server": t.name, "concurrency": conc}
            level.update(summarize(stats, merge_cpu([c for _, c in parts[t.name]]), args.max_tokens))
            level["blocks"] = len(parts[t.name])
            out[t.name].append(level)
            print(
                f"  [{t.name}] c={conc:<3} {level['req_per_s']:6.2f} req/s  TTFT p50 {level['ttft_ms']['p50']:7.1f} ms"
                f"  ITL p50 {level['itl_ms']['p50']:6.2f} ms  errors {level['errors']}"
                f"  other load {level['cpu']['foreign_busy_cores']:.2f} cores",
                flush=True,
            )
    return out


# ---------------------------------------------------------------- report


def level_table(rows: list[dict[str, Any]]) -> str:
    head = ["conc", "server", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "TPOT p50"]
    head += ["e2e p50", "tok/event", "errors", "other load"]
    return table(
        head,
        [
            [
                r["concurrency"], r["server"], fmt(r["req_per_s"], 2), fmt(r["output_tok_per_s"]),
                fmt(r["ttft_ms"]["p50"]), fmt(r["ttft_ms"]["p99"]), fmt(r["itl_ms"]["p50"], 2),
                fmt(r["itl_ms"]["p99"], 2), fmt(r["tpot_ms"]["p50"], 2), fmt(r["e2e_ms"]["p50"], 0),
                fmt(r["tokens_per_event"], 2), r["errors"],
                fmt(r["cpu"]["foreign_busy_cores"] + r["cpu"]["steal_cores"], 2),
            ]
            for r in rows
        ],
    )  # fmt: skip


def cpu_table(rows: list[dict[str, Any]], per_token: bool) -> str:
    roles = sorted({k for r in rows for k in r["cpu_ms_per_request"]})
    unit = "CPU ms per output token" if per_token else "CPU ms per request"
    head = ["conc", "server", *roles, "ours", "client"]

    def cell(r: dict[str, Any], v: float | None) -> str:
        return "-" if v is None else f"{v / (r['tokens_per_request'] if per_token else 1):.2f}"

    body = [
        [
            r["concurrency"],
            r["server"],
            *(cell(r, r["cpu_ms_per_request"].get(k)) for k in roles),
            cell(r, r["ours_cpu_ms_per_request"]),
            cell(r, r["client_cpu_ms_per_request"]),
        ]
        for r in rows
    ]
    return f"{unit}, by process (ours = frontend + processor + worker):\n" + table(head, body)


def comparison(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for g, v in zip(runs["graph"], runs["vllm"], strict=True):
        itl, ttft = g["itl_ms"]["p50"] / v["itl_ms"]["p50"], g["ttft_ms"]["p50"] - v["ttft_ms"]["p50"]
        rows.append(
            {
                "concurrency": g["concurrency"],
                "itl_p50_ratio": itl,
                "ttft_p50_diff_ms": ttft,
                "tpot_p50_ratio": g["tpot_ms"]["p50"] / v["tpot_ms"]["p50"],
                "output_tok_per_s_ratio": g["output_tok_per_s"] / v["output_tok_per_s"],
                "serving_cpu_ms_per_token": {
                    "graph": g["serving_cpu_ms_per_token"],
                    "vllm": v["serving_cpu_ms_per_token"],
                },
                "meets_itl_target": itl <= 1.05,
                "meets_ttft_target": ttft <= 5.0,
            }
        )
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "conc",
        "ITL p50 graph/vLLM",
        "TTFT p50 graph - vLLM",
        "TPOT p50 graph/vLLM",
        "out tok/s graph/vLLM",
    ]
    head += ["serving CPU ms/token graph / vLLM", "ITL <= 1.05x", "TTFT <= +5 ms"]
    return table(
        head,
        [
            [
                c["concurrency"], f"{c['itl_p50_ratio']:.2f}x", f"{c['ttft_p50_diff_ms']:+.1f} ms",
                f"{c['tpot_p50_ratio']:.2f}x", f"{c['output_tok_per_s_ratio']:.2f}x",
                f"{c['serving_cpu_ms_per_token']['graph']:.2f} / {c['serving_cpu_ms_per_token']['vllm']:.2f}",
                "yes" if c["meets_itl_target"] else "no", "yes" if c["meets_ttft_target"] else "no",
            ]
            for c in rows
        ],
    )  # fmt: skip


# ---------------------------------------------------------------- main


def instant(args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    prompts = build_prompts(model_path, args.prompts, args.prompt_tokens, args.seed)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pids = args.url.rstrip("/"), attached_processes(args.url)
        else:
            server = stack.enter_context(graph_server(args))
            url, pids = server.url, server.processes()
        target = Target("graph", url, pids, args)
        print(f"processes: {pids}")
        check = target.check(prompts[0])
        print(f"check: {check}")
        stats, cpu = asyncio.run(target.run(prompts, args.concurrency[0], args.duration, args.warmup))
    row = {"server": "graph", "concurrency": args.concurrency[0], **summarize(stats, cpu, args.max_tokens)}
    print(f"\n{level_table([row])}\n\n{cpu_table([row], per_token=False)}")
    return {"check": check, **row}


def against_vllm(args: argparse.Namespace, graph, model_path: str) -> dict[str, Any]:
    n = sum(args.requests_per_level)
    prompts = build_prompts(model_path, args.prompts + n, args.prompt_tokens, args.seed)
    warm, measured = prompts[: args.prompts], prompts[args.prompts :]
    env = worker_env(graph, model_path)
    report: dict[str, Any] = {"vllm_env_set": {k: v for k, v in env.items() if os.environ.get(k) != v}}
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="ig-bench-vllm-") as tmp:
        flags = worker_flags(args, f"ipc://{tmp}/kv-events.sock")

        def vllm_server() -> Server:  # with our frontend's server settings: no access log, warnings only
            port = free_port()
            argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
            argv += ["--served-model-name", graph.spec.model.name, "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--disable-uvicorn-access-log", "--uvicorn-log-level", "warning", *flags]
            return Server("vllm", argv, RESULTS / "logs" / f"request_path-{args.label}-vllm.log", port, env)

        servers = [lambda: graph_server(args), vllm_server]  # each made when it starts: its port is free
        for group in [servers] if args.interleave else [[s] for s in servers]:
            with contextlib.ExitStack() as stack:
                targets = []
                for make in group:  # one at a time: two model loads at once would only slow both
                    s = stack.enter_context(make())
                    targets.append(Target(s.name, s.url, s.processes(), args))
                    report[f"{s.name}_processes"] = targets[-1].pids  # for py-spy and the like
                    report[f"{s.name}_check"] = targets[-1].check(warm[0])
                runs.update(asyncio.run(levels(targets, args, warm, measured)))
    rows = [runs[k][i] for i in range(len(args.concurrency)) for k in ("graph", "vllm")]
    report.update(runs=runs, comparison=comparison(runs))
    print(f"\n{level_table(rows)}\n\n{comparison_table(report['comparison'])}")
    print(f"\n{cpu_table(rows, per_token=True)}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_flags:
        print(json.dumps(engine_flags(args, args.engine_flags)))
        return 0
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    def on_term(signum, frame):  # SIGTERM: unwind, so that the servers are stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    graph, model_path = load_spec(args)
    try:
        results = against_vllm(args, graph, model_path) if args.vllm else instant(args, model_path)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    results["model"] = {"name": graph.spec.model.name, "source": graph.spec.model.source, "path": model_path}
    write_json("request_path", args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
