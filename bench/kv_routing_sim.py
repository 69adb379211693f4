"""The scarce-cache routing benchmark on a simulated clock: routing policies in model time only.

``bench/kv_routing.py`` measures the real graph, where the serving path (HTTP, NATS, the
processor, Python event loops on 2 shared cores) adds ~10-15 ms and noise to every TTFT.
This script runs the same workload (same generator, same seed) through the same parts the
router and the simulated engine are made of, on an event queue instead of the wall clock:

- each worker is the simulated engine's own ``Scheduler`` + ``KvCache`` with the default
  polynomial timing model (``engines/mocker``), stepping back to back while it has work;
- the router is the real ``KvPolicy`` over a real ``KvIndex`` fed with each worker's KV event
  batches ``--event-delay-ms`` after the step that produced them; load reports (running,
  waiting, KV usage) reach it every ``--load-interval`` seconds per worker, as on the event plane;
- ``--concurrency`` closed-loop clients; a request reaches its worker ``--hop-ms`` after it is
  sent, its first token is seen ``--hop-ms`` after the step that made it.

Deterministic for a seed, and about 2 seconds per strategy, so it can compare policies and
weights that the real benchmark cannot separate from its noise. It does not replace that
benchmark: it leaves out everything but the model.

Strategies:

- ``random``, ``round-robin``;
- ``kv``: the router's ``KvPolicy`` (``--weights`` as JSON; default: the router's defaults);
  ``--routers 2``: two replicas, requests alternating between them, each with only its own
  in-flight decisions (``InflightPrefill``);
- ``least-loaded``: fewest running + waiting right now, read from the engines (an exact, instant
  view no real router has): what load balancing alone gives;
- ``active[:W]``: Dynamo's router cost, W x prefill blocks to compute + KV blocks in use, over an
  exact view of the requests this router sent (``RoutedWork``);
- ``clairvoyant``: for each request, the worker where it would get its first token soonest, found
  by running a copy of every engine forward (it knows every engine's state and step clock; greedy:
  it ignores later requests, so not a strict bound, but it sees all a router could).

Output: a table; JSON in bench/results/kv_routing_sim-<label>-<time>.json.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import itertools
import json
import random
import statistics
from collections.abc import Callable

from harness import fmt, output_args, pct, table, write_json
from inference_graph import wire
from inference_graph.core.kv_index import KvIndex
from inference_graph.core.kv_scoring import InflightPrefill, KvPolicy
from inference_graph.engines.mocker.kv_cache import KvCache
from inference_graph.engines.mocker.scheduler import Scheduler, Sequence
from inference_graph.engines.mocker.timing import PolynomialTiming, step_ms
from inference_graph.engines.mocker.tokens import TokenSampler, Vocab
from kv_routing import oracle_fraction, workload, workload_args

VOCAB = Vocab.plain(32_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="random,round-robin,least-loaded,kv")
    workload_args(p)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="run seeds seed .. seed+N-1; report means")
    p.add_argument(
        "--weights", default=None, help="kv scorer weights as JSON, e.g. '{\"prefix_overlap\": 1}'"
    )
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--routers", type=int, default=1, help="router replicas (kv); requests alternate")
    p.add_argument("--hop-ms", type=float, default=0.0, help="client -> worker and worker -> client latency")
    p.add_argument("--event-delay-ms", type=float, default=1.0, help="KV events: step end -> router index")
    p.add_argument("--load-interval", type=float, default=1.0, help="seconds between a worker's load reports")
    output_args(p, label="run")
    return p.parse_args(argv)


class SimWorker:
    def __init__(self, name: str, args: argparse.Namespace, clock: Callable[[], float]) -> None:
        self.name = name
        self.kv = KvCache(args.blocks, args.block_size)
        self.scheduler = Scheduler(
            self.kv,
            TokenSampler(VOCAB, 0.0),
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=8192,  # engine.mocker.maxNumBatchedTokens' default
            max_model_len=args.max_model_len,
            clock=clock,
        )
        self.stepping = False
        self.step = None  # the step in progress and when it ends
        self.step_end = 0.0
        self.event_seq = 0

    def load(self, now: float) -> wire.LoadMetrics:
        s = self.scheduler
        return wire.LoadMetrics(
            self.name, now, len(s.running), len(s.waiting), self.kv.usage, self.kv.num_blocks
        )


class RoutedWork:
    """What a router knows of the requests it sent, exactly, if callers tell it when each one's first
    token comes and when it ends: uncached prompt tokens still to prefill and the KV blocks in use
    (each block once, however many requests share it), per worker. Dynamo's router keeps this view."""

    def __init__(self, workers: list[str]) -> None:
        self.prefill_tokens = dict.fromkeys(workers, 0)
        self.block_refs: dict[str, dict[int, int]] = {w: {} for w in workers}
        self._requests: dict[int, tuple[str, int, list[int]]] = {}

    def add(self, request: int, worker: str, uncached: int, hashes: list[int]) -> None:
        self._requests[request] = (worker, uncached, hashes)
        self.prefill_tokens[worker] += uncached
        refs = self.block_refs[worker]
        for h in hashes:
            refs[h] = refs.get(h, 0) + 1

    def first_token(self, request: int) -> None:
        if request in self._requests:
            worker, uncached, _ = self._requests[request]
            self.prefill_tokens[worker] -= uncached

    def finished(self, request: int) -> None:
        if request in self._requests:
            worker, _, hashes = self._requests.pop(request)
            refs = self.block_refs[worker]
            for h in hashes:
                refs[h] -= 1
                if not refs[h]:
                    del refs[h]


class Simulation:
    """One strategy over the whole request sequence."""

    def __init__(self, args: argparse.Namespace, strategy: str, requests: list) -> None:
        self.args = args
        self.strategy = strategy
        self.requests = requests
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.timing = PolynomialTiming()
        self.workers = [SimWorker(f"w{i}", args, lambda: self.now) for i in range(args.workers)]
        self.by_name = {w.name: w for w in self.workers}
        self.index = KvIndex(args.block_size)
        self.load: dict[str, wire.LoadMetrics] = {}
        # Router replicas: each hears every event and load report (one shared index and load view
        # stand for identical copies) but only its own in-flight decisions.
        self.inflight_views = [InflightPrefill(ttl=args.load_interval) for _ in range(args.routers)]
        weights = json.loads(args.weights) if args.weights else None
        self.policies = [
            KvPolicy(self.index, weights, temperature=args.temperature, seed=args.seed + r, inflight=inflight)
            for r, inflight in enumerate(self.inflight_views)
        ]
        self.rng = random.Random(args.seed + 1)
        self.rr = itertools.cycle(self.workers)
        self.results: list[dict] = [{} for _ in requests]
        self._next = iter(range(len(requests)))
        self._live: dict[str, tuple[int, float]] = {}  # sequence id -> (request index, sent at)
        self.routed = RoutedWork(list(self.by_name))
        self._finished = 0

    # ------------------------------------------------------------ event queue

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def run(self) -> list[dict]:
        for _ in range(self.args.concurrency):
            self._send_next()
        rng = random.Random(self.args.seed + 2)
        for w in self.workers:  # load reports on their own phases
            self.at(rng.uniform(0, self.args.load_interval), lambda w=w: self._report(w))
        while self._queue and self._finished < len(self.requests):
            self.now, _, action = heapq.heappop(self._queue)
            action()
        return self.results

    # ------------------------------------------------------------ clients and routing

    def _send_next(self) -> None:
        i = next(self._next, None)
        if i is None:
            return
        sent = self.now
        worker = self._route(i, self.requests[i][1])
        self.at(sent + self.args.hop_ms / 1000, lambda: self._arrive(i, sent, worker))

    def _route(self, i: int, prompt: list[int]) -> SimWorker:
        if self.strategy == "random":
            return self.rng.choice(self.workers)
        if self.strategy == "round-robin":
            return next(self.rr)
        if self.strategy == "clairvoyant":
            return min(self.workers, key=lambda w: (self._exact_ttft(w, prompt), w.name))
        if self.strategy.startswith("active"):
            return self._active_cost(i, prompt)
        if self.strategy == "least-loaded":
            return min(
                self.workers, key=lambda w: (len(w.scheduler.running) + len(w.scheduler.waiting), w.name)
            )
        policy = self.policies[i % len(self.policies)]  # the request plane's queue group alternates
        decision = policy.decide(prompt, list(self.by_name), self.load, self.now)
        return self.by_name[decision.worker]

    def _active_cost(self, i: int, prompt: list[int]) -> SimWorker:
        """Dynamo's cost over ``RoutedWork``: ``w`` x prefill blocks to compute (those queued plus
        this prompt's uncached ones) + KV blocks in use with this prompt's added; lowest wins.
        ``active:W`` sets ``w`` (Dynamo's ``overlap_score_weight``, default 1)."""
        hashes = self.index.request_hashes(prompt)
        overlap = self.index.overlap(hashes)
        bs = self.args.block_size
        weight = float(self.strategy.partition(":")[2] or 1.0)
        best: tuple[float, SimWorker, int] | None = None
        for w in self.workers:
            uncached = len(prompt) - min(overlap.get(w.name, 0) * bs, len(prompt) - 1)
            refs = self.routed.block_refs[w.name]
            blocks = len(refs) + sum(1 for h in hashes if h not in refs) + 1  # + the partial last block
            cost = weight * (self.routed.prefill_tokens[w.name] + uncached) / bs + blocks
            if best is None or cost < best[0]:
                best = (cost, w, uncached)
        _, worker, uncached = best
        self.routed.add(i, worker.name, uncached, hashes)
        return worker

    def _exact_ttft(self, worker: SimWorker, prompt: list[int]) -> float:
        """Seconds until ``prompt``'s first token on ``worker`` if nothing else arrived: a copy of
        its engine runs forward (what a router that saw every engine's state and clock could know)."""
        memo = {id(worker.scheduler.sampler): worker.scheduler.sampler}
        sched, step = copy.deepcopy((worker.scheduler, worker.step), memo)
        seq = Sequence("probe", prompt, self.args.block_size, key=0, max_tokens=1, ignore_eos=True)
        t = self.now + self.args.hop_ms / 1000
        if step is not None:
            t = max(t, worker.step_end)
            sched.complete(step)
        sched.clock = lambda: t
        sched.add(seq)
        while True:
            step = sched.schedule()
            t += step_ms(self.timing, step.prefill_tokens, step.decode_batch, step.kv_usage) / 1000
            if any(ev.seq is seq for ev in sched.complete(step)):
                return t - self.now

    def _arrive(self, i: int, sent: float, worker: SimWorker) -> None:
        _, prompt, max_tokens = self.requests[i]
        sid = f"r{i}"
        seq = Sequence(sid, prompt, self.args.block_size, key=i, max_tokens=max_tokens, ignore_eos=True)
        self._live[sid] = (i, sent)
        self.results[i] = {}
        worker.scheduler.add(seq)
        self._kick(worker)

    # ------------------------------------------------------------ workers

    def _kick(self, worker: SimWorker) -> None:
        if worker.stepping or not worker.scheduler.has_work():
            return
        step = worker.scheduler.schedule()
        if not step:
            return
        worker.stepping = True
        seconds = step_ms(self.timing, step.prefill_tokens, step.decode_batch, step.kv_usage) / 1000
        worker.step, worker.step_end = step, self.now + seconds
        self.at(self.now + seconds, lambda: self._complete(worker, step))

    def _complete(self, worker: SimWorker, step) -> None:
        worker.stepping = False
        worker.step = None
        hop = self.args.hop_ms / 1000
        for ev in worker.scheduler.complete(step):
            i, sent = self._live[ev.seq.request_id]
            result = self.results[i]
            if "ttft" not in result:
                result.update(
                    ttft=self.now + hop - sent,
                    prompt_tokens=ev.seq.num_prompt,
                    cached_tokens=ev.seq.num_cached_tokens,
                    worker=worker.name,
                )
                self.routed.first_token(i)
            if ev.finished:
                result["e2e"] = self.now + hop - sent
                self._finished += 1
                del self._live[ev.seq.request_id]
                self.routed.finished(i)
                self.at(self.now + hop, self._send_next)
        events = worker.kv.take_events()
        if events:
            worker.event_seq += 1
            batch = wire.KvEventBatch(worker.name, worker.event_seq, self.now, events)
            self.at(self.now + self.args.event_delay_ms / 1000, lambda: self._apply(batch))
        self._kick(worker)

    def _apply(self, batch: wire.KvEventBatch) -> None:
        if self.index.apply(batch) is not None:
            raise RuntimeError(f"index out of step with {batch.instance_id}")

    def _report(self, worker: SimWorker) -> None:
        self.load[worker.name] = worker.load(self.now)
        for inflight in self.inflight_views:
            inflight.observe_load(worker.name, self.now)
        self.at(self.now + self.args.load_interval, lambda: self._report(worker))


def summarise(args: argparse.Namespace, results: list[dict]) -> dict:
    measured = results[args.warmup_requests :]
    ttft = [r["ttft"] * 1000 for r in measured]
    prompt = sum(r["prompt_tokens"] for r in measured)
    per_worker: dict[str, int] = {}
    for r in measured:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    return {
        "requests": len(measured),
        "cached_fraction": sum(r["cached_tokens"] for r in measured) / max(1, prompt),
        "ttft_p50_ms": pct(ttft, 0.50),
        "ttft_p90_ms": pct(ttft, 0.90),
        "ttft_p99_ms": pct(ttft, 0.99),
        "e2e_p50_s": pct([r["e2e"] for r in measured], 0.50),
        "requests_per_worker": dict(sorted(per_worker.items())),
    }


def over_seeds(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Means over seeds, plus each strategy's p99 / round-robin's p99 of the same seed (mean, max)."""
    rows: dict[str, dict] = {}
    for name in per_seed[0]:
        runs = [seed_rows[name] for seed_rows in per_seed]
        row = {key: statistics.mean(r[key] for r in runs) for key in METRICS}
        if all("round-robin" in seed_rows for seed_rows in per_seed):
            ratios = [
                r["ttft_p99_ms"] / s["round-robin"]["ttft_p99_ms"]
                for r, s in zip(runs, per_seed, strict=True)
            ]
            row["p99_over_rr_mean"], row["p99_over_rr_max"] = statistics.mean(ratios), max(ratios)
        rows[name] = row
    return rows


METRICS = ("cached_fraction", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "e2e_p50_s")


def print_table(rows: dict[str, dict], oracle: float, seeds: int) -> None:
    base = rows.get("round-robin")
    print(f"means over {seeds} seed(s); p99/rr: per seed, then mean (max)")
    body = []
    for name, r in rows.items():
        x = r["cached_fraction"] / base["cached_fraction"] if base else float("nan")
        ratio = "-"
        if "p99_over_rr_mean" in r:
            ratio = f"{r['p99_over_rr_mean']:.2f} ({r['p99_over_rr_max']:.2f})"
        ttft = [fmt(r[f"ttft_{q}_ms"]) for q in ("p50", "p90", "p99")]
        body.append([name, fmt(r["cached_fraction"], 3), fmt(x, 2), *ttft, ratio, fmt(r["e2e_p50_s"], 2)])
    body.append(["oracle", fmt(oracle, 3), "", "", "", "", "", ""])
    head = ["strategy", "cached", "x rr", "TTFT p50 ms", "p90 ms", "p99 ms", "p99/rr", "e2e p50 s"]
    print(table(head, body))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    per_seed: list[dict[str, dict]] = []
    oracles = []
    for seed in range(args.seed, args.seed + args.seeds):
        seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
        requests = workload(seed_args)
        oracles.append(oracle_fraction(seed_args, requests))
        per_seed.append(
            {
                s: summarise(seed_args, Simulation(seed_args, s, requests).run())
                for s in args.strategies.split(",")
            }
        )
    rows = over_seeds(per_seed)
    oracle = statistics.mean(oracles)
    print_table(rows, oracle, args.seeds)
    write_json("kv_routing_sim", args, {"oracle": oracle, "results": rows, "per_seed": per_seed})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
