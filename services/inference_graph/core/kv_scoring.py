"""KV-aware routing policy: produce request data once, weighted scorers, a picker.

The shape follows llm-d's scheduler profile (STYLE 4, 5):

1. **produce** (``RequestContext``): the prompt's router block hashes and each
   worker's prefix overlap, computed once from the ``KvIndex``; the load view
   and the router's own in-flight prefill tokens are read, not computed. Each
   scorer declares the context fields it ``consumes``; ``build_scorers``
   rejects one that reads a field nothing produces, and the in-flight view is
   only computed when a scorer reads it;
2. **score**: every ``Scorer`` reads the typed context and returns a score per
   worker; scores are clamped to [0, 1] and combined as a weighted mean
   (weights normalised to sum 1, so the combined score is in [0, 1] and the
   temperature means the same whatever the weights);
3. **pick**: temperature 0 takes the best score, ties broken at random (a
   seeded ``random.Random``); temperature T > 0 samples from
   ``softmax(score / T)``.

Scorers are registered once in ``SCORERS`` (name -> factory; no aliases) and
configured by a dict such as ``{"prefix_overlap": 1.0, "kv_usage": 0.3}`` or,
with parameters, ``{"inflight_prefill": {"weight": 0.5, "saturation_tokens": 4096}}``.

Missing load metrics (a worker that has not reported yet) count as an idle
worker: newly started workers are usually empty.

Pure: no I/O; time is passed in (``now``) where it matters.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import wire
from .kv_index import KvIndex
from .spec import KvScorerWeights, ScorerName

__all__ = [
    "DEFAULT_WEIGHTS",
    "PRODUCED",
    "SCORERS",
    "Decision",
    "InflightPrefill",
    "InflightPrefillScorer",
    "KvPolicy",
    "KvUsageScorer",
    "PrefixOverlapScorer",
    "QueueDepthScorer",
    "RequestContext",
    "Scorer",
    "build_scorers",
    "combine",
    "expected_hit_tokens",
    "pick",
]

# The spec's defaults: one definition of the router's default weights.
DEFAULT_WEIGHTS: dict[str, float] = KvScorerWeights().as_dict()


# ---------------------------------------------------------------- the per-request context


@dataclass(slots=True)
class RequestContext:
    """What the producer step computes once per request; scorers only read it."""

    num_tokens: int
    block_size: int
    block_hashes: list[int]
    overlap: dict[str, int]  # leading blocks held per worker; absent = 0
    load: Mapping[str, wire.LoadMetrics] = field(default_factory=dict)
    inflight: Mapping[str, int] = field(default_factory=dict)  # uncached tokens routed, not yet in load

    @property
    def num_blocks(self) -> int:
        return len(self.block_hashes)


def expected_hit_tokens(overlap_blocks: int, block_size: int, num_tokens: int) -> int:
    """Prefix-cache hit in tokens, capped at ``num_tokens - 1`` (the last token is always computed)."""
    return max(0, min(overlap_blocks * block_size, num_tokens - 1))


# ---------------------------------------------------------------- scorers


# What the producer step fills in a RequestContext; scorers declare which of these they read.
PRODUCED: frozenset[str] = frozenset(
    {"num_tokens", "block_size", "block_hashes", "overlap", "load", "inflight"}
)


class Scorer(Protocol):
    name: ScorerName
    consumes: frozenset[str]  # RequestContext fields read; checked against PRODUCED at build time

    def score(self, ctx: RequestContext, workers: Sequence[str]) -> dict[str, float]:
        """A score per worker, higher is better; values outside [0, 1] are clamped by the caller."""
        ...


class PrefixOverlapScorer:
    """Fraction of the request's full blocks the worker already holds as a prefix."""

    name = ScorerName.PREFIX_OVERLAP
    consumes = frozenset({"block_hashes", "overlap"})

    def score(self, ctx: RequestContext, workers: Sequence[str]) -> dict[str, float]:
        n = ctx.num_blocks
        if not n:
            return dict.fromkeys(workers, 0.0)
        overlap = ctx.overlap
        return {w: overlap.get(w, 0) / n for w in workers}


class KvUsageScorer:
    """``1 - kv_usage``: prefer workers with free KV blocks."""

    name = ScorerName.KV_USAGE
    consumes = frozenset({"load"})

    def score(self, ctx: RequestContext, workers: Sequence[str]) -> dict[str, float]:
        load = ctx.load
        out: dict[str, float] = {}
        for w in workers:
            m = load.get(w)
            out[w] = 1.0 if m is None else 1.0 - m.kv_usage
        return out


class QueueDepthScorer:
    """Fewer ``waiting + running`` is better, min-max normalised across the candidates.

    The least loaded worker scores 1, the most loaded 0; all equal: all 1.
    ``waiting_weight`` counts a waiting request that many running ones (it has
    its whole prefill ahead of it).
    """

    name = ScorerName.QUEUE_DEPTH
    consumes = frozenset({"load"})

    def __init__(self, waiting_weight: float = 1.0) -> None:
        self.waiting_weight = waiting_weight

    def score(self, ctx: RequestContext, workers: Sequence[str]) -> dict[str, float]:
        load = ctx.load
        ww = self.waiting_weight
        depth: dict[str, float] = {}
        for w in workers:
            m = load.get(w)
            depth[w] = 0.0 if m is None else m.running + ww * m.waiting
        if not depth:
            return {}
        lo, hi = min(depth.values()), max(depth.values())
        if hi <= lo:
            return dict.fromkeys(workers, 1.0)
        span = hi - lo
        return {w: (hi - d) / span for w, d in depth.items()}


class InflightPrefillScorer:
    """Uncached prompt tokens this router sent recently (not yet visible in load): fewer is better.

    ``1 - pending / saturation_tokens`` (clamped): ``saturation_tokens`` pending
    tokens (about one engine step's token budget) already score 0.
    """

    name = ScorerName.INFLIGHT_PREFILL
    consumes = frozenset({"inflight"})

    def __init__(self, saturation_tokens: int = 8192) -> None:
        if saturation_tokens < 1:
            raise ValueError("saturation_tokens must be >= 1")
        self.saturation_tokens = saturation_tokens

    def score(self, ctx: RequestContext, workers: Sequence[str]) -> dict[str, float]:
        inflight = ctx.inflight
        sat = self.saturation_tokens
        return {w: 1.0 - inflight.get(w, 0) / sat for w in workers}


SCORERS: dict[str, Callable[..., Scorer]] = {
    PrefixOverlapScorer.name: PrefixOverlapScorer,
    KvUsageScorer.name: KvUsageScorer,
    QueueDepthScorer.name: QueueDepthScorer,
    InflightPrefillScorer.name: InflightPrefillScorer,
}


def build_scorers(config: Mapping[str, float | Mapping[str, Any]]) -> list[tuple[Scorer, float]]:
    """``{"name": weight}`` or ``{"name": {"weight": w, **parameters}}`` -> (scorer, weight) pairs."""
    out: list[tuple[Scorer, float]] = []
    for name, spec in config.items():
        try:
            factory = SCORERS[name]
        except KeyError:
            raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}") from None
        if isinstance(spec, Mapping):
            params = dict(spec)
            weight = float(params.pop("weight", 1.0))
        else:
            params, weight = {}, float(spec)
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"scorer {name!r}: weight must be a finite number >= 0, got {weight}")
        if weight > 0:
            scorer = factory(**params)
            missing = scorer.consumes - PRODUCED
            if missing:
                raise ValueError(f"scorer {name!r} reads {sorted(missing)}, which no producer fills")
            out.append((scorer, weight))
    if not out:
        raise ValueError("at least one scorer needs a weight > 0")
    return out


# ---------------------------------------------------------------- combination and picking


def combine(scored: Sequence[tuple[Mapping[str, float], float]], workers: Sequence[str]) -> dict[str, float]:
    """Weighted mean of clamped scores; a worker a scorer left out scores 0 there."""
    total_weight = sum(w for _, w in scored)
    out = dict.fromkeys(workers, 0.0)
    for scores, weight in scored:
        k = weight / total_weight
        for w, s in scores.items():
            if w in out:  # NaN fails both comparisons and counts as 0
                out[w] += k * (s if 0.0 <= s <= 1.0 else (1.0 if s > 1.0 else 0.0))
    return out


def pick(scores: Mapping[str, float], temperature: float, rng: random.Random) -> str:
    """Argmax with a random tie-break (``temperature <= 0``), else a ``softmax(score / T)`` sample."""
    if not scores:
        raise ValueError("no worker to pick from")
    if temperature <= 0:
        best = max(scores.values())
        top = [w for w, s in scores.items() if s >= best - 1e-12]
        return top[0] if len(top) == 1 else rng.choice(top)
    best = max(scores.values())
    workers = list(scores)
    weights = [math.exp((scores[w] - best) / temperature) for w in workers]
    return rng.choices(workers, weights)[0]


# ---------------------------------------------------------------- the router's own in-flight decisions


class InflightPrefill:
    """Uncached prompt tokens routed to each worker in the last ``ttl`` seconds.

    Load metrics arrive every ``IG_LOAD_INTERVAL`` (1 s); between two reports
    the router's own recent decisions are the only sign of load it just added.
    An entry expires after ``ttl`` (about one load interval) or when the
    worker reports load taken after it (``observe_load``). Each worker keeps
    its entries oldest first and their running total, so a decision costs
    O(workers) however many decisions are in flight.
    """

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, deque[tuple[float, int]]] = {}  # worker -> [(time, tokens)] oldest first
        self._totals: dict[str, int] = {}

    def add(self, worker: str, tokens: int, now: float) -> None:
        if tokens > 0:
            self._entries.setdefault(worker, deque()).append((now, tokens))
            self._totals[worker] = self._totals.get(worker, 0) + tokens

    def observe_load(self, worker: str, taken_at: float) -> None:
        """Forget ``worker``'s entries older than a load report taken at ``taken_at``."""
        self._expire(worker, taken_at)

    def forget(self, worker: str) -> None:
        self._entries.pop(worker, None)
        self._totals.pop(worker, None)

    def _expire(self, worker: str, cutoff: float) -> None:
        entries = self._entries.get(worker)
        if not entries:
            return
        total = self._totals[worker]
        while entries and entries[0][0] < cutoff:
            total -= entries.popleft()[1]
        if entries:
            self._totals[worker] = total
        else:
            del self._entries[worker], self._totals[worker]

    def pending(self, now: float) -> dict[str, int]:
        cutoff = now - self.ttl
        for worker, entries in list(self._entries.items()):
            if entries[0][0] < cutoff:
                self._expire(worker, cutoff)
        return dict(self._totals)


# ---------------------------------------------------------------- the policy


@dataclass(frozen=True, slots=True)
class Decision:
    worker: str
    overlap_blocks: int  # leading request blocks the chosen worker holds
    expected_hit_tokens: int  # overlap in tokens, capped at prompt_len - 1
    num_blocks: int  # full blocks of the prompt
    scores: dict[str, float]  # combined score per candidate


class KvPolicy:
    """One routing profile: the producer, weighted scorers and the picker over a ``KvIndex``."""

    def __init__(
        self,
        index: KvIndex,
        weights: Mapping[str, float | Mapping[str, Any]] | None = None,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        inflight: InflightPrefill | None = None,
    ) -> None:
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.index = index
        self.scorers = build_scorers(DEFAULT_WEIGHTS if weights is None else weights)
        self.temperature = temperature
        self.inflight = inflight
        self._needs_inflight = any("inflight" in s.consumes for s, _ in self.scorers)
        self._rng = random.Random(seed)

    def context(
        self, token_ids: Sequence[int], load: Mapping[str, wire.LoadMetrics], now: float
    ) -> RequestContext:
        """The producer step: hashes and overlap once per request."""
        hashes = self.index.request_hashes(token_ids)
        return RequestContext(
            num_tokens=len(token_ids),
            block_size=self.index.block_size,
            block_hashes=hashes,
            overlap=self.index.overlap(hashes),
            load=load,
            inflight=self.inflight.pending(now) if self._needs_inflight and self.inflight is not None else {},
        )

    def decide(
        self,
        token_ids: Sequence[int],
        workers: Sequence[str],
        load: Mapping[str, wire.LoadMetrics] | None = None,
        now: float = 0.0,
    ) -> Decision:
        """Choose one of ``workers`` (never empty) for a prompt; records it as in flight."""
        if not workers:
            raise ValueError("no worker to pick from")
        ctx = self.context(token_ids, load or {}, now)
        combined = combine([(s.score(ctx, workers), w) for s, w in self.scorers], workers)
        chosen = pick(combined, self.temperature, self._rng)
        blocks = ctx.overlap.get(chosen, 0)
        hit = expected_hit_tokens(blocks, ctx.block_size, ctx.num_tokens)
        if self.inflight is not None:
            self.inflight.add(chosen, ctx.num_tokens - hit, now)
        return Decision(chosen, blocks, hit, ctx.num_blocks, combined)
