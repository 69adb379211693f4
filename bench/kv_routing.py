"""Scarce-cache routing benchmark: cached-token fraction and TTFT per routing strategy.

Runs the real graph (``inference-graph serve configs/agg_router.yaml --engine mocker``: the
launcher, frontend, processor, router and simulated workers as processes) once per strategy,
on NATS and etcd this script starts, and drives the same request sequence through each:

- ``--workers`` (4) simulated workers in one process, ``--blocks`` (256) KV blocks of
  ``--block-size`` (64) tokens each, the default polynomial timing model (``--speedup`` 1);
- ``--prefixes`` (32) shared prefixes of ``--prefix-tokens`` (1024) token ids; each request is
  one prefix (uniformly drawn) + ``--unique-tokens`` (100) fresh random token ids, and asks for
  50-150 output tokens (uniform, ``ignore_eos``); ``--concurrency`` (32) closed-loop clients;
- the first ``--warmup-requests`` requests are sent but not measured (one continuous closed
  loop: measurement starts when the first measured request is sent, without a burst).

Per request (streaming ``/v1/completions`` with ``include_usage``): TTFT = request sent -> first
``data:`` event; cached tokens = ``usage.prompt_tokens_details.cached_tokens``. Cached fraction =
sum(cached) / sum(prompt tokens) over the measured requests.

Oracle (the best fraction any router could reach): every request hits its whole prefix, in full
blocks, unless its prefix never appeared before (compulsory miss): ``sum(hit_o) / sum(prompt)`` with
``hit_o = floor(prefix / block) * block`` (capped at ``prompt - 1``) if the prefix was seen
earlier in the sequence, else 0. No router can beat it: tokens after the prefix are unique, and a
prefix's first request cannot hit anywhere. It is reachable here: a router that pins each prefix
to one worker (8 per worker: 128 blocks) leaves ``blocks - 128`` blocks per worker for the
requests in flight (8 x ~4 private blocks); the script prints that capacity check.

Strategies: ``random``, ``round-robin``, ``kv`` (one router) and ``kv2`` (kv with two router
replicas: each sees every event and load report, but only its own in-flight decisions).
After each kv run the routers' ``metrics`` endpoints give the predicted hit rate.

Output: a table on stdout; JSON in bench/results/kv_routing-<label>-<time>.json (``harness``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time

import httpx

from harness import RESULTS, ROOT, Server, fmt, output_args, pct, table, write_json
from inference_graph.runtime.embedded import EmbeddedEtcd, EmbeddedNats, free_port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="random,round-robin,kv,kv2")
    p.add_argument("--config", default="configs/agg_router.yaml")
    workload_args(p)
    p.add_argument("--speedup", type=float, default=1.0, help="simulated time runs this many times faster")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every run")
    p.add_argument("--kv-set", action="append", default=[], help="extra --set for kv runs only")
    p.add_argument("--seed", type=int, default=0)
    output_args(p, label="run")
    return p.parse_args(argv)


# ---------------------------------------------------------------- workload


def workload_args(p: argparse.ArgumentParser) -> None:
    """The cluster and the request sequence (also kv_routing_sim.py's)."""
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--blocks", type=int, default=256)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--prefixes", type=int, default=32)
    p.add_argument("--prefix-tokens", type=int, default=1024)
    p.add_argument("--unique-tokens", type=int, default=100)
    p.add_argument("--min-output", type=int, default=50)
    p.add_argument("--max-output", type=int, default=150)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests", type=int, default=640, help="measured requests")
    p.add_argument("--warmup-requests", type=int, default=64)


def workload(args: argparse.Namespace) -> list[tuple[int, list[int], int]]:
    """(prefix index, prompt token ids, max_tokens) for every request, warm-up first; the same for every run."""
    rng = random.Random(args.seed)
    vocab = (100, 1900)  # inside the tiny model's vocabulary, clear of its special tokens
    prefixes = [[rng.randrange(*vocab) for _ in range(args.prefix_tokens)] for _ in range(args.prefixes)]
    out = []
    for _ in range(args.warmup_requests + args.requests):
        p = rng.randrange(args.prefixes)
        unique = [rng.randrange(*vocab) for _ in range(args.unique_tokens)]
        out.append((p, prefixes[p] + unique, rng.randint(args.min_output, args.max_output)))
    return out


def oracle_fraction(args: argparse.Namespace, requests: list[tuple[int, list[int], int]]) -> float:
    """The compulsory-miss bound over the measured requests (see the module docstring)."""
    seen: set[int] = set()
    hit = total = 0
    for i, (p, prompt, _) in enumerate(requests):
        if i >= args.warmup_requests:
            total += len(prompt)
            if p in seen:
                hit += min(args.prefix_tokens // args.block_size * args.block_size, len(prompt) - 1)
        seen.add(p)
    return hit / total


def capacity_check(args: argparse.Namespace) -> dict:
    per_worker_prefixes = -(-args.prefixes // args.workers)
    pinned = per_worker_prefixes * (args.prefix_tokens // args.block_size)
    in_flight = -(-args.concurrency // args.workers)
    private = (
        -(-(args.prefix_tokens % args.block_size + args.unique_tokens + args.max_output) // args.block_size)
        + 1
    )
    return {
        "pinned_prefix_blocks_per_worker": pinned,
        "in_flight_private_blocks_per_worker": in_flight * private,
        "blocks_per_worker": args.blocks,
        "fits": pinned + in_flight * private <= args.blocks,
    }


# ---------------------------------------------------------------- graph


def graph_server(args: argparse.Namespace, strategy: str, infra: dict[str, str]) -> Server:
    """One launcher run of the benchmark's graph, on the NATS and etcd of ``infra``."""
    kv = strategy.startswith("kv")
    port = free_port()
    sets = [
        f"metadata.name=kvbench-{strategy}",
        "model.name=tiny",
        "model.source=builtin://tiny-llama",
        "engine.maxModelLen=2048",
        f"engine.blockSize={args.block_size}",
        f"engine.mocker.numKvBlocks={args.blocks}",
        "engine.mocker.timing=polynomial",
        f"engine.mocker.speedup={args.speedup:g}",
        f"services.decode.replicas={args.workers}",
        f"engine.mocker.instancesPerProcess={args.workers}",
        f"routing.strategy={'kv' if kv else strategy}",
        f"services.router.replicas={2 if strategy == 'kv2' else 1 if kv else 0}",
        *args.overrides,
        *(args.kv_set if kv else []),
    ]
    argv = [sys.executable, "-m", "inference_graph.launcher", "serve", args.config, "--engine", "mocker"]
    argv += ["--port", str(port), *(x for s in sets for x in ("--set", s))]
    log = RESULTS / "logs" / f"kv_routing-{args.label}-{strategy}.log"
    return Server(f"kvbench-{strategy}", argv, log, port, {**os.environ, **infra})


async def wait_routers(infra: dict[str, str], namespace: str, count: int, timeout: float = 60.0) -> None:
    """The frontend is ready before the router may be: wait until ``count`` routers are registered."""
    from inference_graph.runtime.discovery import Discovery

    discovery = await Discovery.connect(infra["ETCD_ENDPOINTS"].split(","))
    try:
        async with asyncio.timeout(timeout):
            while True:
                if len(await discovery.list_instances(namespace, "router")) >= count:
                    return
                await asyncio.sleep(0.2)
    finally:
        await discovery.close()


async def router_metrics(infra: dict[str, str], namespace: str) -> dict[str, dict[str, float]]:
    """Every router's counters, read from its request-plane ``metrics`` endpoint."""
    import nats
    from prometheus_client.parser import text_string_to_metric_families

    from inference_graph.runtime.discovery import Discovery
    from inference_graph.runtime.request_plane import EndpointClient

    discovery = await Discovery.connect(infra["ETCD_ENDPOINTS"].split(","))
    nc = await nats.connect(infra["NATS_SERVER"])
    client = EndpointClient(nc, namespace, "router")
    out: dict[str, dict[str, float]] = {}
    try:
        for router in await discovery.list_instances(namespace, "router"):
            text = b"".join([f async for f in client.stream("metrics", b"", router)]).decode()
            values: dict[str, float] = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if not sample.labels or sample.name.endswith("_sum"):
                        values[sample.name] = sample.value
            out[router] = values
    finally:
        await client.close()
        await nc.close()
        await discovery.close()
    return out


# ---------------------------------------------------------------- load


async def drive(args, url: str, requests: list[tuple[int, list[int], int]], on_measure=None) -> list[dict]:
    """One continuous closed loop over every request (no burst between warm-up and measurement);
    ``on_measure()`` is awaited just before the first measured request is sent."""
    results: list[dict] = [{} for _ in requests]
    measure_start: dict[str, float] = {}
    next_index = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async def one(http: httpx.AsyncClient, i: int) -> None:
        _, prompt, max_tokens = requests[i]
        body = {
            "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        t0 = time.perf_counter()
        first = None
        usage = None
        async with http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                results[i] = {"error": response.status_code, "body": (await response.aread())[:200].decode()}
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if first is None:
                    first = time.perf_counter()
                if line.startswith("data: [DONE]"):
                    break
                if '"usage"' in line:
                    event = json.loads(line[6:])
                    usage = event.get("usage") or usage
        end = time.perf_counter()
        details = (usage or {}).get("prompt_tokens_details") or {}
        results[i] = {
            "ttft": first - t0,
            "e2e": end - t0,
            "prompt_tokens": (usage or {}).get("prompt_tokens", len(prompt)),
            "cached_tokens": details.get("cached_tokens", 0),
            "completion_tokens": (usage or {}).get("completion_tokens", 0),
        }

    async def client(http: httpx.AsyncClient) -> None:
        for i in next_index:
            if i == args.warmup_requests:
                if on_measure is not None:
                    await on_measure()
                measure_start["t"] = time.perf_counter()
            await one(http, i)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(args.concurrency)))
    args.measured_s = time.perf_counter() - measure_start.get("t", time.perf_counter())
    return results


def summarise(args, results: list[dict], wall: float) -> dict:
    measured = results[args.warmup_requests :]
    ok = [r for r in measured if "ttft" in r]
    prompt = sum(r["prompt_tokens"] for r in ok)
    return {
        "requests": len(ok),
        "errors": len(measured) - len(ok),
        "cached_fraction": sum(r["cached_tokens"] for r in ok) / max(1, prompt),
        "ttft_ms": {q: 1000 * pct([r["ttft"] for r in ok], v) for q, v in (("p50", 0.5), ("p99", 0.99))},
        "e2e_ms_p50": 1000 * pct([r["e2e"] for r in ok], 0.5),
        "ttft_ms_all": [round(1000 * r["ttft"], 1) for r in ok],  # for tail analysis across runs
        "req_per_s": len(measured) / wall,
        "wall_s": wall,
    }


def counter_delta(before: dict, after: dict, name: str) -> float:
    """A counter's increase summed over every router."""
    return sum(m.get(name, 0) - before.get(r, {}).get(name, 0) for r, m in after.items())


def run_one(args, strategy: str, infra: dict[str, str], requests) -> dict:
    with graph_server(args, strategy, infra) as graph:
        routers = {"kv": 1, "kv2": 2}.get(strategy, 0)
        if routers:
            asyncio.run(wait_routers(infra, graph.name, routers))
        before: dict = {}

        async def read_counters() -> None:  # the routers' counters as measurement starts
            before.update(await router_metrics(infra, graph.name))

        results = asyncio.run(drive(args, graph.url, requests, read_counters if routers else None))
        summary = summarise(args, results, args.measured_s)
        if routers:
            after = asyncio.run(router_metrics(infra, graph.name))
            summary["predicted_fraction"] = counter_delta(
                before, after, "ig_router_predicted_hit_tokens_total"
            ) / max(1, counter_delta(before, after, "ig_router_prompt_tokens_total"))
            summary["router_metrics"] = after
        summary["fallback_warnings"] = graph.log.read_bytes().count(b"falls back")
        return summary


def print_table(rows: dict[str, dict], oracle: float) -> None:
    rr = rows.get("round-robin")
    body = []
    for name, r in rows.items():
        x = r["cached_fraction"] / rr["cached_fraction"] if rr and rr["cached_fraction"] else float("nan")
        p99 = r["ttft_ms"]["p99"] / rr["ttft_ms"]["p99"] if rr else float("nan")
        pred = fmt(r["predicted_fraction"], 3) if "predicted_fraction" in r else "-"
        body.append(
            [
                name,
                fmt(r["cached_fraction"], 3),
                fmt(x, 2),
                pred,
                fmt(r["ttft_ms"]["p50"], 0),
                fmt(r["ttft_ms"]["p99"], 0),
                fmt(p99, 2),
                fmt(r["e2e_ms_p50"], 0),
                fmt(r["req_per_s"]),
                r["errors"],
            ]
        )
    body.append(["oracle", fmt(oracle, 3), "", "", "", "", "", "", "", ""])
    head = ["strategy", "cached", "x rr", "predicted", "TTFT p50 ms", "TTFT p99 ms", "p99/rr", "e2e p50 ms"]
    print("\n" + table([*head, "req/s", "errors"], body))
    print("(oracle: compulsory misses only; see the module docstring)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = workload(args)
    oracle = oracle_fraction(args, requests)
    capacity = capacity_check(args)
    print(f"oracle cached fraction {oracle:.3f}; capacity check {capacity}")
    subprocess.run(
        [sys.executable, "-m", "inference_graph.launcher", "prepare-model", args.config, "--engine", "mocker",
         "--set", "model.source=builtin://tiny-llama"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    rows: dict[str, dict] = {}
    with EmbeddedNats() as nats_server, EmbeddedEtcd() as etcd:
        infra = {"NATS_SERVER": nats_server.url, "ETCD_ENDPOINTS": ",".join(etcd.endpoints)}
        for strategy in args.strategies.split(","):
            load0 = os.getloadavg()[0]
            rows[strategy] = run_one(args, strategy, infra, requests)
            rows[strategy]["loadavg_before"] = load0
            r = rows[strategy]
            print(f"{strategy}: cached {r['cached_fraction']:.3f}, TTFT p99 {r['ttft_ms']['p99']:.0f} ms, "
                  f"{r['errors']} errors, load before {load0:.1f}", flush=True)  # fmt: skip
    print_table(rows, oracle)
    write_json("kv_routing", args, {"oracle_fraction": oracle, "capacity": capacity, "strategies": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
