"""Router core alone: decision latency and KV event ingestion of one ``KvIndex`` (no I/O).

Decision latency (issue 4, benchmark 2): ``--workers`` workers each holding
``--blocks`` cached blocks of ``--block-size`` tokens. Each worker holds a
random subset of ``--prefixes`` shared prefixes (``--prefix-tokens`` long,
real chained hashes) plus unique filler blocks up to ``--blocks``. A request is
one shared prefix + ``--tail-tokens`` unique tokens (~1k tokens). One decision =
``KvPolicy.decide``: hash the prompt, prefix overlap over the index, the
default scorers (``kv_scoring.DEFAULT_WEIGHTS``) over all workers with load
metrics, argmax, with the router's ``InflightPrefill`` as ``RouterService``
keeps it: decisions are spaced ``1 / --decision-rate`` seconds apart on a
simulated clock, so about a second's worth of them are in flight. Reported per
stage too (hash, overlap, score+pick).

Ingestion: the index starts at capacity (every worker holds ``--blocks``
blocks, loaded as snapshots), then takes a stream of ``KvEventBatch``es spread
over the workers, each with one ``BlockStored`` of ``--event-blocks`` blocks
(half of them chained on the worker's newest block, exercising the
engine -> router parent lookup) and one ``BlockRemoved`` of the worker's oldest
``--event-blocks`` blocks (steady state). Block events = stored + removed blocks.
Measured twice: ``apply`` on decoded structs, and msgpack decode + ``apply``
(what the router process does per NATS message).

Output: a table on stdout, JSON in bench/results/router_core-<time>.json.

    .venv/bin/python bench/router_core.py            # issue 4 sizes (64 x 16k blocks)
    .venv/bin/python bench/router_core.py --quick    # 8 x 2k, seconds
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from array import array
from collections import deque

from harness import output_args, pct, table, write_json
from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.core.kv_index import KvIndex
from inference_graph.core.kv_scoring import InflightPrefill, KvPolicy, RequestContext, combine, pick

MASK = (1 << 64) - 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--blocks", type=int, default=16384, help="cached blocks per worker")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--prefixes", type=int, default=256, help="shared prefixes in the cluster")
    p.add_argument("--prefix-tokens", type=int, default=960)
    p.add_argument("--holders", type=float, default=0.25, help="fraction of workers holding each prefix")
    p.add_argument("--tail-tokens", type=int, default=100)
    p.add_argument("--decisions", type=int, default=5000)
    p.add_argument("--decision-rate", type=float, default=1000.0, help="decisions per simulated second")
    p.add_argument("--event-blocks", type=int, default=16, help="blocks per BlockStored / BlockRemoved")
    p.add_argument("--batches", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="8 workers x 2k blocks, fewer iterations")
    output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.workers, args.blocks, args.decisions, args.batches = 8, 2048, 1000, 3000
    return args


def rand_tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 150_000) for _ in range(n)]


# ---------------------------------------------------------------- decision latency


def build_index(args, rng: random.Random) -> tuple[KvIndex, list[list[int]], list[str]]:
    bs = args.block_size
    index = KvIndex(bs)
    workers = [f"worker-{i:03d}" for i in range(args.workers)]
    prefixes = [rand_tokens(rng, args.prefix_tokens) for _ in range(args.prefixes)]
    prefix_hashes = [hash_blocks(p, bs) for p in prefixes]
    per_holder = max(1, round(args.holders * args.workers))
    held: dict[str, list[int]] = {w: [] for w in workers}
    for hashes in prefix_hashes:
        for w in rng.sample(workers, per_holder):
            held[w].extend(hashes)
    for w in workers:
        blocks = held[w][: args.blocks]
        filler = args.blocks - len(blocks)
        blocks.extend(rng.getrandbits(64) for _ in range(filler))  # unique blocks nobody asks for
        index.load_snapshot(w, {(h * 0x9E3779B97F4A7C15) & MASK: h for h in blocks}, seq=0)
    return index, prefixes, workers


def bench_decisions(args) -> dict:
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    index, prefixes, workers = build_index(args, rng)
    build_s = time.perf_counter() - t0
    load = {
        w: wire.LoadMetrics(w, 0.0, rng.randrange(0, 64), rng.randrange(0, 8), rng.random()) for w in workers
    }
    inflight = InflightPrefill(ttl=1.0)
    policy = KvPolicy(index, seed=args.seed, inflight=inflight)
    step = 1.0 / args.decision_rate
    requests = [
        rng.choice(prefixes) + rand_tokens(rng, args.tail_tokens) for _ in range(min(args.decisions, 2000))
    ]
    for i, r in enumerate(requests[:200]):  # warm up
        policy.decide(r, workers, load, i * step)
    total, t_hash, t_overlap, t_score = [], [], [], []
    hits = 0
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(args.decisions):
        r = requests[i % len(requests)]
        now = (200 + i) * step
        a = clock()
        d = policy.decide(r, workers, load, now)
        b = clock()
        total.append((b - a) / 1000)
        hits += d.overlap_blocks > 0
    for i in range(min(args.decisions, 2000)):  # stage breakdown, measured separately
        r = requests[i % len(requests)]
        a = clock()
        hashes = index.request_hashes(r)
        b = clock()
        overlap = index.overlap(hashes)
        c = clock()
        rc = RequestContext(len(r), args.block_size, hashes, overlap, load, inflight.pending(now))
        pick(combine([(s.score(rc, workers), w) for s, w in policy.scorers], workers), 0.0, policy._rng)
        e = clock()
        t_hash.append((b - a) / 1000)
        t_overlap.append((c - b) / 1000)
        t_score.append((e - c) / 1000)
    stats = index.stats()
    return {
        "workers": args.workers,
        "blocks_per_worker": args.blocks,
        "index_blocks": stats.num_blocks,
        "block_size": args.block_size,
        "request_tokens": args.prefix_tokens + args.tail_tokens,
        "build_s": round(build_s, 2),
        "decisions": args.decisions,
        "with_prefix_hit": round(hits / args.decisions, 3),
        "decision_us_p50": round(statistics.median(total), 1),
        "decision_us_p99": round(pct(total, 0.99), 1),
        "decision_us_mean": round(statistics.fmean(total), 1),
        "hash_us_p50": round(statistics.median(t_hash), 1),
        "overlap_us_p50": round(statistics.median(t_overlap), 1),
        "overlap_us_p99": round(pct(t_overlap, 0.99), 1),
        "score_pick_us_p50": round(statistics.median(t_score), 1),
    }


# ---------------------------------------------------------------- ingestion


def make_stream(args, rng: random.Random) -> tuple[dict[str, dict[int, int]], list[wire.KvEventBatch]]:
    """Per-worker preloaded caches (at capacity) and a steady-state stream: store a run, evict the oldest."""
    bs, n = args.block_size, args.event_blocks
    workers = [f"worker-{i:03d}" for i in range(args.workers)]
    capacity = max(2, args.blocks // n)  # runs of n blocks per worker
    preload: dict[str, dict[int, int]] = {}
    live: dict[str, deque[list[int]]] = {}
    for w in workers:
        runs = deque([rng.getrandbits(64) for _ in range(n)] for _ in range(capacity))
        live[w] = runs
        preload[w] = {e: rng.getrandbits(64) for run in runs for e in run}
    last = {w: live[w][-1][-1] for w in workers}  # engine hash of the worker's newest block
    seqs = dict.fromkeys(workers, 0)
    batches = []
    for i in range(args.batches):
        w = workers[i % len(workers)]
        tokens = rand_tokens(rng, n * bs)
        engine_hashes = [rng.getrandbits(64) for _ in range(n)]
        parent = last[w] if rng.random() < 0.5 else None  # half continue a sequence, half start one
        gone = live[w].popleft()  # never the newest run, so the next parent stays known
        live[w].append(engine_hashes)
        last[w] = engine_hashes[-1]
        seqs[w] += 1
        events: list[wire.KvEvent] = [
            wire.BlockStored(engine_hashes, parent, tokens, bs),
            wire.BlockRemoved(gone),
        ]
        batches.append(wire.KvEventBatch(w, seqs[w], 0.0, events))
    return preload, batches


def count_blocks(batches: list[wire.KvEventBatch]) -> int:
    return sum(len(e.block_hashes) for b in batches for e in b.events)


def bench_ingest(args) -> dict:
    rng = random.Random(args.seed + 1)
    preload, batches = make_stream(args, rng)
    blocks = count_blocks(batches)
    payloads = [wire.encoder.encode(b) for b in batches]

    def loaded() -> KvIndex:
        index = KvIndex(args.block_size)
        for w, pairs in preload.items():
            index.load_snapshot(w, pairs, seq=0)
        return index

    def run_apply() -> float:
        index = loaded()
        gc.collect()
        t = time.perf_counter()
        for b in batches:
            if index.apply(b) is not None:
                raise RuntimeError("unexpected resync")
        return time.perf_counter() - t

    def run_decode_apply() -> float:
        index = loaded()
        decode = wire.decoder(wire.KvEventBatch).decode
        gc.collect()
        t = time.perf_counter()
        for p in payloads:
            index.apply(decode(p))
        return time.perf_counter() - t

    def run_hash_only() -> float:
        t = time.perf_counter()
        for b in batches:
            hash_blocks(b.events[0].token_ids, args.block_size)
        return time.perf_counter() - t

    def run_decode_only() -> float:
        decode = wire.decoder(wire.KvEventBatch).decode
        t = time.perf_counter()
        for p in payloads:
            decode(p)
        return time.perf_counter() - t

    arrays = [array("I", b.events[0].token_ids) for b in batches]

    def run_hash_packed() -> float:  # if the wire carried token ids as packed u32 bytes
        t = time.perf_counter()
        for a in arrays:
            hash_blocks(a, args.block_size)
        return time.perf_counter() - t

    apply_s = min(run_apply() for _ in range(2))
    decode_s = min(run_decode_apply() for _ in range(2))
    hash_s = run_hash_only()
    packed_s = run_hash_packed()
    decode_only_s = run_decode_only()
    stored = sum(len(b.events[0].block_hashes) for b in batches)
    return {
        "batches": len(batches),
        "block_events": blocks,
        "stored_blocks": stored,
        "removed_blocks": blocks - stored,
        "events_per_s_apply": round(blocks / apply_s),
        "events_per_s_decode_apply": round(blocks / decode_s),
        "stored_blocks_per_s_hash_only": round(stored / hash_s),
        "stored_blocks_per_s_hash_packed_u32": round(stored / packed_s),
        "us_per_batch_decode_only": round(decode_only_s / len(batches) * 1e6, 1),
        "us_per_batch_apply": round(apply_s / len(batches) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    decision = bench_decisions(args)
    ingest = bench_ingest(args)
    rows = [
        ("decision p50 / p99 (us)", f"{decision['decision_us_p50']} / {decision['decision_us_p99']}"),
        ("  hash p50 (us)", decision["hash_us_p50"]),
        ("  overlap p50 / p99 (us)", f"{decision['overlap_us_p50']} / {decision['overlap_us_p99']}"),
        ("  score + pick p50 (us)", decision["score_pick_us_p50"]),
        ("index blocks", decision["index_blocks"]),
        ("block events/s (apply)", ingest["events_per_s_apply"]),
        ("block events/s (msgpack decode + apply)", ingest["events_per_s_decode_apply"]),
        ("stored blocks/s (router hash only)", ingest["stored_blocks_per_s_hash_only"]),
        ("  same, token ids already packed u32", ingest["stored_blocks_per_s_hash_packed_u32"]),
        (
            "us per batch: apply / msgpack decode",
            f"{ingest['us_per_batch_apply']} / {ingest['us_per_batch_decode_only']}",
        ),
    ]
    print(
        f"router core: {args.workers} workers x {args.blocks} blocks, block size {args.block_size}, "
        f"{args.prefix_tokens + args.tail_tokens}-token requests, {args.event_blocks}-block events"
    )
    print(table(["measure", "value"], rows))
    write_json("router_core", args, {"decision": decision, "ingest": ingest})


if __name__ == "__main__":
    main()
