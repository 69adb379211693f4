"""A disaggregated cluster of simulated engines on a simulated clock.

Deterministic and faster than real time: every worker is the simulated
engine's own scheduler and KV cache (``engines/mocker``) stepping on an event
queue, with step times from its timing model, so hours of traffic on dozens of
workers run in seconds on one core. It reproduces what the planner acts on:

- requests arrive from a trace (Poisson, seeded); a decode worker is picked
  (fewest sequences, then lowest KV usage) and applies the conditional
  disaggregation rule: prefill remotely when the prompt is longer than
  ``maxLocalPrefillLength`` and the prefill queue holds fewer than
  ``maxPrefillQueueSize`` requests, else locally;
- prefill workers pull from the queue when they have nothing waiting; a finished
  prefill hands the request to its decode worker, which receives the KV over the
  simulated transfer time (blocks held, as in the engine) and decodes;
- scaling: a new replica serves after ``startup_s``; a removed one drains (decode:
  no new requests, finishes its sequences; prefill: stops pulling, finishes) and
  then stops. Replica-seconds count every replica from start to stop.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..engines.mocker.kv_cache import KvCache
from ..engines.mocker.scheduler import Scheduler, Sequence, Step
from ..engines.mocker.timing import TimingModel, step_ms
from ..engines.mocker.tokens import TokenSampler, Vocab
from .observation import Observation
from .planner import Planner
from .policies import DECODE, PREFILL, CapacityModel

_VOCAB = Vocab.plain(32_000)
# Requests a prefill worker holds at once, as the prefill role's pull consumer does
# (roles/worker/prefill.py: one computing, the next one's result on its way to decode).
PREFILL_SLOTS = 2


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Phase:
    """A stretch of a load trace: Poisson arrivals at ``rate`` per second."""

    name: str
    seconds: float
    rate: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class EngineShape:
    timing: TimingModel
    num_kv_blocks: int = 16384
    block_size: int = 64
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    transfer_s_per_token: float = 0.0  # KV transfer time per prompt token

    @property
    def kv_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    def capacity(self) -> CapacityModel:
        """What the SLA policy knows of these engines: the same timing model and sizes."""
        return CapacityModel(
            self.timing, self.kv_tokens, self.max_num_seqs, self.max_batched_tokens, self.transfer_s_per_token
        )


@dataclass(frozen=True)
class ClusterConfig:
    engine: EngineShape
    max_local_prefill_length: int = 1000
    max_prefill_queue_size: int = 2
    startup_s: float = 30.0  # from the scaling decision to serving
    interval_s: float = 10.0  # between two planner decisions
    seed: int = 0


# ---------------------------------------------------------------- state


@dataclass(eq=False)
class SimRequest:
    rid: int
    arrival: float
    input_tokens: int
    output_tokens: int
    remote: bool = False
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    done: bool = False

    @property
    def ttft_ms(self) -> float:
        assert self.first_token is not None
        return 1000.0 * (self.first_token - self.arrival)

    @property
    def itl_ms(self) -> float:
        """Mean gap between this request's tokens (0 for a single token)."""
        if self.tokens < 2 or self.first_token is None or self.last_token is None:
            return 0.0
        return 1000.0 * (self.last_token - self.first_token) / (self.tokens - 1)


@dataclass(eq=False)
class SimWorker:
    wid: int
    role: str
    scheduler: Scheduler
    started: float
    ready_at: float
    draining: bool = False
    stopped: float | None = None
    stepping: bool = False
    wake_at: float | None = None  # a wake-up queued for a KV transfer's end
    awaiting_prefill: int = 0  # decode: its requests still queued or prefilling remotely

    @property
    def load(self) -> int:
        return len(self.scheduler.running) + len(self.scheduler.waiting)


@dataclass
class _IntervalStats:
    arrivals: int = 0
    input_tokens: int = 0
    remote_tokens: int = 0
    local_tokens: int = 0
    output_tokens: int = 0
    finished: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)


@dataclass
class SimResult:
    requests: list[SimRequest]
    replica_seconds: dict[str, float]
    timeline: list[dict]  # one row per interval: time, replicas per role, load, latencies
    decisions: list[dict]  # every change applied: time, role, from, to, reason

    def attainment(self, ttft_ms: float, itl_ms: float) -> float:
        ok = sum(1 for r in self.requests if r.done and r.ttft_ms <= ttft_ms and r.itl_ms <= itl_ms)
        return ok / max(len(self.requests), 1)

    def direction_changes(self, role: str) -> list[float]:
        """Times at which ``role`` started moving the other way."""
        times, last = [], 0
        for d in self.decisions:
            if d["role"] != role:
                continue
            direction = 1 if d["to"] > d["from"] else -1
            if last and direction != last:
                times.append(d["time"])
            last = direction
        return times


# ---------------------------------------------------------------- the cluster


class Cluster:
    def __init__(self, config: ClusterConfig, replicas: dict[str, int], planner: Planner | None = None):
        self.config = config
        self.planner = planner
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._ids = itertools.count()
        self.workers: list[SimWorker] = []
        self.prefill_queue: deque[SimRequest] = deque()
        # prefill sequence id -> (request, the decode worker that will decode it)
        self._prefill_jobs: dict[str, tuple[SimRequest, SimWorker]] = {}
        self._decode_seqs: dict[str, SimRequest] = {}
        self._decode_of: dict[int, SimWorker] = {}  # queued request id -> its decode worker
        self._end = 0.0  # when the trace's last phase ends
        self.requests: list[SimRequest] = []
        self._stats = _IntervalStats()
        self.timeline: list[dict] = []
        self.decisions: list[dict] = []
        for role, count in replicas.items():
            for _ in range(count):
                self._start_worker(role, ready_at=0.0)

    # ------------------------------------------------------------ running

    def run(self, trace: list[Phase], drain_s: float = 600.0) -> SimResult:
        """Play ``trace``, then let in-flight requests finish (up to ``drain_s`` more)."""
        rng = random.Random(self.config.seed)
        start = 0.0
        for phase in trace:
            self._schedule_arrivals(phase, start, rng)
            start += phase.seconds
        self._end = start
        self._at(self.config.interval_s, self._plan if self.planner is not None else self._sample)
        while self._events:
            when, _, action = heapq.heappop(self._events)
            if when > self._end and (self._all_done() or when > self._end + drain_s):
                break
            self.now = when
            action()
        for worker in self.workers:
            if worker.stopped is None:
                worker.stopped = self.now
        return SimResult(self.requests, self._replica_seconds(), self.timeline, self.decisions)

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._order), action))

    def _schedule_arrivals(self, phase: Phase, start: float, rng: random.Random) -> None:
        t = start
        while phase.rate > 0:
            t += rng.expovariate(phase.rate)
            if t >= start + phase.seconds:
                return
            jitter = rng.uniform(0.9, 1.1)
            inputs = max(1, round(phase.input_tokens * jitter))
            outputs = max(1, round(phase.output_tokens * rng.uniform(0.9, 1.1)))
            request = SimRequest(len(self.requests), t, inputs, outputs)
            self.requests.append(request)
            self._at(t, functools.partial(self._arrive, request))

    # ------------------------------------------------------------ request flow

    def _arrive(self, request: SimRequest) -> None:
        stats = self._stats
        stats.arrivals += 1
        stats.input_tokens += request.input_tokens
        long_prompt = request.input_tokens > self.config.max_local_prefill_length
        if long_prompt:
            stats.remote_tokens += request.input_tokens
        else:
            stats.local_tokens += request.input_tokens
        decode = self._pick_decode()
        pullers = self._serving(PREFILL)
        if long_prompt and pullers and len(self.prefill_queue) < self.config.max_prefill_queue_size:
            request.remote = True
            self.prefill_queue.append(request)
            self._decode_of[request.rid] = decode
            decode.awaiting_prefill += 1  # a draining decode worker waits for these too
            self._feed_prefill()
        else:
            self._decode(request, decode, remote_kv=False)

    def _pick_decode(self) -> SimWorker:
        serving = self._serving(DECODE)
        if not serving:  # all decode replicas starting: queue on the one that will be ready first
            serving = [min((w for w in self._active(DECODE)), key=lambda w: w.ready_at)]
        return min(serving, key=lambda w: (w.load, w.scheduler.kv.usage, w.wid))

    def _feed_prefill(self) -> None:
        """Prefill workers with a free slot pull from the queue (pull = load balancing)."""
        for worker in sorted(self._serving(PREFILL), key=lambda w: (w.load, w.wid)):
            while self.prefill_queue and worker.load < PREFILL_SLOTS:
                request = self.prefill_queue.popleft()
                seq = self._sequence(f"p{request.rid}", request.input_tokens, 1)
                self._prefill_jobs[seq.request_id] = (request, self._decode_of.pop(request.rid))
                worker.scheduler.add(seq)
                self._kick(worker)

    def _decode(self, request: SimRequest, worker: SimWorker, remote_kv: bool) -> None:
        seq = self._sequence(f"d{request.rid}", request.input_tokens, request.output_tokens, remote_kv)
        self._decode_seqs[seq.request_id] = request
        worker.scheduler.add(seq)
        self._kick(worker)

    def _sequence(self, sid: str, prompt_tokens: int, max_tokens: int, remote_kv: bool = False) -> Sequence:
        # Distinct prompts: no prefix is shared, so the cache does not hide prefill work.
        base = int(sid[1:]) * 1_000_003
        prompt = [(base + i) % 31_000 + 1000 for i in range(prompt_tokens)]
        engine = self.config.engine
        return Sequence(
            sid,
            prompt,
            engine.block_size,
            key=base,
            max_tokens=max_tokens,
            ignore_eos=True,
            remote_kv=remote_kv,
        )

    # ------------------------------------------------------------ engine steps

    def _kick(self, worker: SimWorker) -> None:
        if worker.stepping or worker.stopped is not None:
            return
        if self.now < worker.ready_at:
            self._wake(worker, worker.ready_at)
            return
        sched = worker.scheduler
        if not sched.has_work():
            self._maybe_stop(worker)
            return
        step = sched.schedule()
        if not step:
            end = sched.next_transfer_end()
            if end is not None:
                self._wake(worker, end)
            return
        engine = self.config.engine
        seconds = step_ms(engine.timing, step.prefill_tokens, step.decode_batch, step.kv_usage) / 1000.0
        worker.stepping = True
        self._at(self.now + seconds, lambda: self._complete(worker, step))

    def _wake(self, worker: SimWorker, when: float) -> None:
        if worker.wake_at is not None and worker.wake_at <= when:
            return
        worker.wake_at = when

        def wake() -> None:
            if worker.wake_at == when:
                worker.wake_at = None
                self._kick(worker)

        self._at(when, wake)

    def _complete(self, worker: SimWorker, step: Step) -> None:
        worker.stepping = False
        for event in worker.scheduler.complete(step):
            sid = event.seq.request_id
            if worker.role == PREFILL:
                if event.finished:
                    request, decode = self._prefill_jobs.pop(sid)
                    decode.awaiting_prefill -= 1
                    self._decode(request, decode, remote_kv=True)
                continue
            request = self._decode_seqs[sid]
            request.tokens += 1
            if request.first_token is None:
                request.first_token = self.now
                self._stats.ttft_ms.append(request.ttft_ms)
            request.last_token = self.now
            if event.finished:
                request.done = True
                del self._decode_seqs[sid]
                self._stats.finished += 1
                self._stats.output_tokens += request.tokens
                self._stats.itl_ms.append(request.itl_ms)
        if worker.role == PREFILL:
            self._feed_prefill()
        self._kick(worker)

    # ------------------------------------------------------------ replicas

    def _start_worker(self, role: str, ready_at: float) -> SimWorker:
        engine = self.config.engine
        kv = KvCache(engine.num_kv_blocks, engine.block_size, enable_caching=True)
        transfer = engine.transfer_s_per_token
        sched = Scheduler(
            kv,
            TokenSampler(_VOCAB, 0.0),
            max_num_seqs=engine.max_num_seqs,
            max_num_batched_tokens=engine.max_batched_tokens,
            max_model_len=1 << 20,
            transfer_seconds=lambda tokens: tokens * transfer,
            clock=lambda: self.now,
        )
        worker = SimWorker(next(self._ids), role, sched, started=self.now, ready_at=ready_at)
        self.workers.append(worker)
        if role == PREFILL and ready_at > self.now:
            self._at(ready_at, self._feed_prefill)
        return worker

    def _active(self, role: str) -> list[SimWorker]:
        """Replicas that count toward the role's size: starting or serving, not draining."""
        return [w for w in self.workers if w.role == role and w.stopped is None and not w.draining]

    def _serving(self, role: str) -> list[SimWorker]:
        return [w for w in self._active(role) if w.ready_at <= self.now]

    def scale(self, role: str, replicas: int) -> None:
        active = self._active(role)
        for _ in range(replicas - len(active)):  # scale up: un-drain first, then start new ones
            draining = [w for w in self.workers if w.role == role and w.draining and w.stopped is None]
            if draining:
                draining[-1].draining = False
            else:
                self._start_worker(role, ready_at=self.now + self.config.startup_s)
        surplus = len(active) - replicas
        if surplus > 0:  # scale down: the not-yet-ready first, then the least loaded
            victims = sorted(active, key=lambda w: (w.ready_at <= self.now, w.load, -w.wid))[:surplus]
            for worker in victims:
                worker.draining = True
                self._maybe_stop(worker)
        if role == PREFILL:
            self._feed_prefill()

    def _maybe_stop(self, worker: SimWorker) -> None:
        if (
            worker.draining
            and worker.stopped is None
            and not worker.scheduler.has_work()
            and not worker.stepping
            and not worker.awaiting_prefill
        ):
            worker.stopped = self.now

    def _replica_seconds(self) -> dict[str, float]:
        out = {PREFILL: 0.0, DECODE: 0.0}
        for worker in self.workers:
            out[worker.role] += (worker.stopped if worker.stopped is not None else self.now) - worker.started
        return out

    def replica_counts(self) -> dict[str, int]:
        return {role: len(self._active(role)) for role in (PREFILL, DECODE)}

    # ------------------------------------------------------------ planner

    def observe(self) -> Observation:
        stats, self._stats = self._stats, _IntervalStats()
        decode = self._serving(DECODE)
        prefill = self._serving(PREFILL)
        return Observation(
            now=self.now,
            interval_s=self.config.interval_s,
            arrivals=stats.arrivals,
            remote_prefill_tokens=stats.remote_tokens,
            local_prefill_tokens=stats.local_tokens,
            mean_input_tokens=stats.input_tokens / stats.arrivals if stats.arrivals else 0.0,
            mean_output_tokens=stats.output_tokens / stats.finished if stats.finished else 0.0,
            prefill_replicas=len(prefill),
            prefill_queue=len(self.prefill_queue),
            prefill_in_progress=sum(w.load for w in prefill),
            decode_replicas=len(decode),
            decode_kv_usage=sum(w.scheduler.kv.usage for w in decode) / len(decode) if decode else 0.0,
            decode_running=sum(len(w.scheduler.running) for w in decode),
            decode_waiting=sum(len(w.scheduler.waiting) for w in decode),
            ttft_p90_ms=_p90(stats.ttft_ms),
            itl_p90_ms=_p90(stats.itl_ms),
        )

    def _record(self, obs: Observation) -> None:
        self.timeline.append(
            {
                "time": self.now,
                **{f"{role}_replicas": n for role, n in self.replica_counts().items()},
                "arrival_rate": obs.arrival_rate,
                "prompt_tokens_per_s": (obs.remote_prefill_tokens + obs.local_prefill_tokens)
                / obs.interval_s,
                "prefill_queue": obs.prefill_queue,
                "decode_kv_usage": obs.decode_kv_usage,
                "decode_running": obs.decode_running,
                "ttft_p90_ms": obs.ttft_p90_ms,
                "itl_p90_ms": obs.itl_p90_ms,
            }
        )

    def _sample(self) -> None:
        """Without a planner: record the timeline only."""
        self._record(self.observe())
        if not self._finished():
            self._at(self.now + self.config.interval_s, self._sample)

    def _plan(self) -> None:
        assert self.planner is not None
        obs = self.observe()
        current = self.replica_counts()
        decision = self.planner.decide(obs, current)
        for role, replicas in decision.changed(current).items():
            self.decisions.append(
                {
                    "time": self.now,
                    "role": role,
                    "from": current[role],
                    "to": replicas,
                    "reason": decision.reasons[role],
                }
            )
            self.scale(role, replicas)
        self._record(obs)
        if not self._finished():
            self._at(self.now + self.config.interval_s, self._plan)

    def _all_done(self) -> bool:
        return all(r.done for r in self.requests)

    def _finished(self) -> bool:
        return self.now >= self._end and self._all_done()


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
