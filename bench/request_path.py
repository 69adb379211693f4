"""Request path cost: frontend -> processor -> worker with the instant simulated engine.

Starts ``inference-graph serve CONFIG --engine mocker`` with ``engine.mocker.timing=instant``
(no simulated time: every millisecond is our own serving path) and N decode workers, or
attaches to a running graph with ``--url`` (its processes are then found by command line).

Load: a closed loop of ``--concurrency`` clients, each on its own keep-alive HTTP/1.1
connection, sending streaming ``/v1/completions`` with ``ignore_eos`` and ``max_tokens``
output tokens. Prompts are distinct texts of exactly ``--prompt-tokens`` tokens (random
words, so no two share a first KV block; in instant mode prefix-cache hits cost no time
anyway, but distinct prompts keep the worker's block accounting realistic). The client is
deliberately cheap (raw asyncio streams on uvloop, no HTTP library, no JSON parsing on
the hot path): it counts SSE ``data:`` events until ``data: [DONE]`` and the end of the
chunked body. One request is fully parsed before the run to check the output (usage).

Per request: TTFT = request written -> first read holding a ``data:`` event (the first
event carries text); ITL = gaps between successive reads holding events (an event may
carry several tokens when the server coalesces: ``tok/event`` says so); TPOT = (last
event - first event) / (tokens - 1).

CPU: utime+stime from /proc/<pid>/stat of every process of the graph (frontend,
processor, each worker, nats-server, etcd, launcher) and of this client, as deltas over
the measured window (after ``--warmup`` seconds), divided by completed requests.
"ours" = frontend + processor + workers (not nats-server, etcd, the launcher or the
client). Machine-wide busy CPU over the window is reported too: other load is noise.

Output: a table on stdout; JSON in bench/results/request_path-<label>-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--url", help="attach to a running graph (e.g. http://127.0.0.1:8000) instead of starting one"
    )
    p.add_argument("--config", default="configs/agg.yaml")
    p.add_argument("--workers", type=int, default=2, help="decode replicas (started graph only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for serve")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--prompt-tokens", type=int, default=1100)
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--prompts", type=int, default=512, help="distinct prompts, cycled")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    p.add_argument("--label", default="run")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------- graph and processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The launcher of this interpreter (the project's venv, or any Python with the package on its path).
LAUNCHER = [sys.executable, "-m", "inference_graph.launcher"]


class Graph:
    def __init__(self, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = RESULTS / f"request_path-{args.label}.log"
        self.argv = [
            *LAUNCHER,
            "serve",
            args.config,
            "--port",
            str(self.port),
            "--engine",
            "mocker",
            "--set",
            "engine.mocker.timing=instant",
            "--set",
            f"services.decode.replicas={args.workers}",
            "--set",
            f"engine.maxModelLen={max(4096, args.prompt_tokens + args.max_tokens + 64)}",
        ]
        for o in args.overrides:
            self.argv += ["--set", o]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"graph exited ({self.proc.returncode}); see {self.log}")
            if b"ready:" in self.log.read_bytes():
                return
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"graph not ready within {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None
        self._logf.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError):
        return -1


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def machine_busy() -> tuple[float, float]:
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / TICK, sum(vals) / TICK


def label_of(cmd: str) -> str | None:
    for needle, label in (
        ("roles.frontend", "frontend"),
        ("roles.processor", "processor"),
        ("roles.worker", "worker"),
        ("nats-server", "nats-server"),
        ("etcd", "etcd"),
        ("inference-graph", "launcher"),
        ("inference_graph.launcher", "launcher"),
    ):
        if needle in cmd:
            return label
    return None


def find_processes(root: int | None) -> dict[int, str]:
    """pid -> label; the descendants of ``root``, or (attached) every role process here."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    if root is not None:
        parent = {p: _ppid(p) for p in pids}
        tree, todo = {root}, [root]
        while todo:
            cur = todo.pop()
            kids = [p for p, pp in parent.items() if pp == cur]
            tree.update(kids)
            todo += kids
        pids = sorted(tree)
    out: dict[int, str] = {}
    for pid in pids:
        label = label_of(_cmdline(pid))
        if label and (root is not None or label not in ("launcher",)):
            out[pid] = label
    counts: dict[str, int] = {}
    named: dict[int, str] = {}
    for pid in sorted(out):
        label = out[pid]
        if label == "worker":
            counts[label] = counts.get(label, 0) + 1
            label = f"worker-{counts[label] - 1}"
        named[pid] = label
    return named


def launcher_of(url: str) -> int | None:
    """The ``inference-graph serve ... --port P`` process serving ``url``, if it runs here."""
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    for d in os.listdir("/proc"):
        if d.isdigit():
            cmd = _cmdline(int(d))
            launcher = "inference-graph" in cmd or "inference_graph.launcher" in cmd
            if launcher and " serve " in cmd and f"--port {port} " in cmd + " ":
                return int(d)
    print("no launcher found for that port: counting every role process on this machine", file=sys.stderr)
    return None


# ---------------------------------------------------------------- prompts


def model_path(args: argparse.Namespace) -> str:
    argv = [*LAUNCHER, "prepare-model", args.config, "--engine", "mocker"]
    for o in args.overrides:
        argv += ["--set", o]
    out = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def build_prompts(path: str, count: int, n_tokens: int, seed: int) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    words = sorted(t for t in tok.get_vocab() if re.fullmatch(r"Ġ[a-z]{3,9}", t))
    ids = [tok.token_to_id(w) for w in words]
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        text = tok.decode(rng.choices(ids, k=n_tokens)).strip()
        if len(tok.encode(text).ids) == n_tokens:
            prompts.append(text)
    return prompts


# ---------------------------------------------------------------- load


def request_bytes(host: str, path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.done = 0
        self.errors = 0
        self.events = 0
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.tpot: list[float] = []
        self.e2e: list[float] = []


END = b"\r\n0\r\n\r\n"


async def one(reader, writer, req: bytes, stats: Stats, tokens: int) -> None:
    t0 = time.perf_counter()
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    if status != 200:
        # Error bodies are small JSON with Content-Length.
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if m:
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
        n = buf.count(b"data: ")
        if n:
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


async def client(
    host: str, port: int, reqs: list[bytes], start: int, stats: Stats, stop: asyncio.Event, tokens: int
):
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    i = start
    try:
        while not stop.is_set():
            await one(reader, writer, reqs[i % len(reqs)], stats, tokens)
            i += 1
    finally:
        writer.close()


def verify(url: str, path: str, body: dict) -> dict:
    """One request fully parsed: returns the usage and the number of events."""
    import urllib.request

    body = dict(body, stream_options={"include_usage": True})
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    usage, events, text = None, 0, []
    with urllib.request.urlopen(req, timeout=60) as r:
        for line in r:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            ev = json.loads(line[6:])
            events += 1
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev.get("choices", []):
                text.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return {"usage": usage, "events": events, "chars": len("".join(text))}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def drive(args, url: str, bodies: list[dict], procs: dict[int, str]) -> dict:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    path = "/v1/chat/completions" if args.chat else "/v1/completions"
    reqs = [request_bytes(f"{host}:{port}", path, b) for b in bodies]
    stats, stop = Stats(), asyncio.Event()
    tasks = [
        asyncio.create_task(client(host, port, reqs, i * 7, stats, stop, args.max_tokens))
        for i in range(args.concurrency)
    ]
    await asyncio.sleep(args.warmup)
    cpu0 = {pid: cpu_seconds(pid) for pid in procs}
    self0 = cpu_seconds(os.getpid())
    busy0 = machine_busy()
    stats.measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(args.duration)
    stats.measuring = False
    wall = time.perf_counter() - t0
    cpu1 = {pid: cpu_seconds(pid) for pid in procs}
    self1 = cpu_seconds(os.getpid())
    busy1 = machine_busy()
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    done = max(1, stats.done)
    cpu: dict[str, float] = {}
    for pid, label in procs.items():
        if cpu0[pid] is None or cpu1[pid] is None:
            continue
        cpu[label] = cpu.get(label, 0.0) + (cpu1[pid] - cpu0[pid])
    per_req = {k: 1000 * v / done for k, v in sorted(cpu.items())}
    ours = sum(v for k, v in per_req.items() if k in ("frontend", "processor") or k.startswith("worker"))
    return {
        "requests": stats.done,
        "errors": stats.errors,
        "wall_s": wall,
        "req_per_s": stats.done / wall,
        "output_tok_per_s": stats.done * args.max_tokens / wall,
        "events_per_request": stats.events / done,
        "tokens_per_event": args.max_tokens / max(1e-9, stats.events / done),
        "ttft_ms": {"p50": 1000 * pct(stats.ttft, 0.5), "p99": 1000 * pct(stats.ttft, 0.99)},
        "itl_ms": {"p50": 1000 * pct(stats.itl, 0.5), "p99": 1000 * pct(stats.itl, 0.99)},
        "tpot_ms_p50": 1000 * pct(stats.tpot, 0.5),
        "e2e_ms": {"p50": 1000 * pct(stats.e2e, 0.5), "p99": 1000 * pct(stats.e2e, 0.99)},
        "cpu_ms_per_request": per_req,
        "ours_cpu_ms_per_request": ours,
        "client_cpu_ms_per_request": 1000 * (self1 - self0) / done,
        "client_cpu_share": (self1 - self0) / wall,
        "machine_busy_cores": (busy1[0] - busy0[0]) / wall,
        "machine_cores": os.cpu_count(),
    }


def print_table(label: str, r: dict) -> None:
    print(f"\n== {label}: {r['requests']} requests in {r['wall_s']:.1f} s, {r['errors']} errors")
    print(f"req/s {r['req_per_s']:.1f}   output tok/s {r['output_tok_per_s']:.0f}")
    print(
        f"TTFT p50 {r['ttft_ms']['p50']:.1f} ms  p99 {r['ttft_ms']['p99']:.1f} ms   "
        f"ITL p50 {r['itl_ms']['p50']:.2f} ms  p99 {r['itl_ms']['p99']:.2f} ms   "
        f"TPOT p50 {r['tpot_ms_p50']:.2f} ms   e2e p50 {r['e2e_ms']['p50']:.0f} ms"
    )
    print(f"SSE events/request {r['events_per_request']:.1f}  (tokens/event {r['tokens_per_event']:.2f})")
    print(f"{'process':<14}{'CPU ms/request':>16}")
    for k, v in r["cpu_ms_per_request"].items():
        print(f"{k:<14}{v:>16.2f}")
    print(f"{'ours total':<14}{r['ours_cpu_ms_per_request']:>16.2f}   (frontend + processor + workers)")
    print(f"{'client':<14}{r['client_cpu_ms_per_request']:>16.2f}   ({r['client_cpu_share']:.2f} cores)")
    print(f"machine busy {r['machine_busy_cores']:.2f} of {r['machine_cores']} cores over the window")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = None
    if args.url:
        url = args.url.rstrip("/")
        procs = find_processes(launcher_of(url))
    else:
        started = Graph(args)
        started.start()
        url = started.url
        procs = find_processes(started.proc.pid)
    try:
        prompts = build_prompts(model_path(args), args.prompts, args.prompt_tokens, args.seed)
        import urllib.request

        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            model = json.load(r)["data"][0]["id"]
        base = {
            "model": model,
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "temperature": 0,
        }
        if args.chat:
            bodies = [dict(base, messages=[{"role": "user", "content": p}]) for p in prompts]
        else:
            bodies = [dict(base, prompt=p) for p in prompts]
        check = verify(url, "/v1/chat/completions" if args.chat else "/v1/completions", bodies[0])
        if not check["usage"] or check["usage"]["completion_tokens"] != args.max_tokens:
            raise SystemExit(f"unexpected output: {check}")
        print(f"processes: {procs}")
        print(f"check: {check}")
        result = asyncio.run(drive(args, url, bodies, procs))
    finally:
        if started:
            started.stop()
    print_table(args.label, result)
    out = {
        "label": args.label,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "check": check,
        "loadavg_before": os.getloadavg(),
        **result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"request_path-{args.label}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
