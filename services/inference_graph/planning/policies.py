"""Scaling policies: an observation in, raw replica counts per role out.

A policy says what each role *should* have now; ``Stabilizer`` then applies
bounds, step limits and stabilization windows. Two plug-ins, chosen by
``spec.planner.policy``:

- ``load``: thresholds with hysteresis on what the workers report (prefill
  requests queued or running per replica; decode KV usage and waiting requests).
  Reactive, needs no model of the engine.
- ``sla``: predicts the next interval's demand (arrival rate, prompt and output
  lengths) and divides it by each role's capacity at the latency targets, taken
  from the engine's timing profile (``CapacityModel``); a correction factor,
  observed / expected latency, absorbs what the profile gets wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from ..core.spec import AutoscalingTargets, GraphSpec, PlannerPolicy, Role
from ..engines.mocker.timing import TimingModel
from .observation import Observation

PREFILL, DECODE = "prefill", "decode"

# Capacity is planned with headroom: a prefill worker kept at 75% of its
# token throughput queues little (an M/D/1 queue waits 1.5 service times at 75%).
PREFILL_UTILIZATION = 0.75
# Decode steps next to a local prefill chunk run longer than the pure decode curve:
# plan for the curve to use at most this share of the ITL target.
DECODE_ITL_SHARE = 0.8
# Decode replicas are planned at this share of their sequence capacity: arrivals
# are bursty, and a request that finds no free slot waits for one (its TTFT grows).
DECODE_UTILIZATION = 0.8
# How far the correction factor moves toward a new observed/expected ratio per interval.
CORRECTION_SMOOTHING = 0.5
CORRECTION_BOUNDS = (0.5, 2.0)
# The trend is extrapolated at this share of its slope (a step in demand is not a ramp).
TREND_DAMPING = 0.5


class ScalingPolicy(Protocol):
    name: str

    def recommend(self, obs: Observation) -> dict[str, int]:
        """Replicas each role should have now, before stabilization (roles it has no view on: absent)."""


# ---------------------------------------------------------------- capacity


@dataclass(frozen=True)
class CapacityModel:
    """One replica's capacity at the latency targets, from the engine's timing profile."""

    timing: TimingModel
    kv_tokens: int  # KV cache capacity of one engine, in tokens
    max_num_seqs: int
    max_batched_tokens: int
    transfer_s_per_token: float = 0.0  # KV transfer time per prompt token (disaggregated)

    def prefill_batch(self, ttft_ms: float) -> int:
        """The largest step (tokens) that leaves half the TTFT budget for waiting behind one such step."""
        lo, hi = 1, self.max_batched_tokens
        if self.timing.prefill_ms(lo) > ttft_ms / 2:
            return lo
        while lo < hi:  # prefill_ms grows with tokens: bisect
            mid = (lo + hi + 1) // 2
            if self.timing.prefill_ms(mid) <= ttft_ms / 2:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def prefill_tokens_per_s(self, ttft_ms: float) -> float:
        """Prompt tokens one prefill replica computes per second while meeting ``ttft_ms``."""
        batch = self.prefill_batch(ttft_ms)
        return PREFILL_UTILIZATION * batch * 1000.0 / self.timing.prefill_ms(batch)

    def expected_ttft_ms(self, input_tokens: float) -> float:
        """An unqueued request: its prefill, its KV transfer, one decode step."""
        tokens = max(1, round(input_tokens))
        return (
            self.timing.prefill_ms(tokens)
            + 1000.0 * self.transfer_s_per_token * tokens
            + self.timing.decode_ms(1, 0.0)
        )

    def decode_usage_limit(self, itl_ms: float, kv_target: float) -> float:
        """Highest KV usage (<= kv_target) at which a pure decode step fits the ITL budget."""
        budget = itl_ms * DECODE_ITL_SHARE
        usage = kv_target
        while usage > 0.05 and self.timing.decode_ms(self.max_num_seqs, usage) > budget:
            usage -= 0.05
        return max(usage, 0.05)

    def decode_sequences(self, context_tokens: float, itl_ms: float, kv_target: float) -> int:
        """Sequences one decode replica holds at once within the KV and ITL targets."""
        usage = self.decode_usage_limit(itl_ms, kv_target)
        by_kv = math.floor(self.kv_tokens * usage / max(context_tokens, 1.0))
        return max(1, math.floor(DECODE_UTILIZATION * min(self.max_num_seqs, by_kv)))

    def expected_itl_ms(self, itl_ms: float, kv_target: float) -> float:
        return self.timing.decode_ms(self.max_num_seqs, self.decode_usage_limit(itl_ms, kv_target))


# ---------------------------------------------------------------- load policy


@dataclass
class LoadPolicy:
    """Thresholds with hysteresis: act above the target, or well below it, never in between."""

    prefill: AutoscalingTargets | None
    decode: AutoscalingTargets | None
    up_ratio: float = 1.1  # scale up when load exceeds the target by 10%
    down_ratio: float = 0.5  # scale down only below half the target
    name: str = "load"

    def recommend(self, obs: Observation) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.prefill is not None:
            out[PREFILL] = self._prefill(obs, self.prefill.queue_per_replica)
        if self.decode is not None:
            out[DECODE] = self._decode(obs, self.decode.kv_usage)
        return out

    def _prefill(self, obs: Observation, per_replica: float) -> int:
        work = obs.prefill_queue + obs.prefill_in_progress
        current = obs.prefill_replicas
        if current == 0:  # decode prefills everything: long prompts arriving are the pending work
            return 1 if obs.remote_prefill_tokens > 0 else 0
        load = work / current
        if load > per_replica * self.up_ratio:
            return max(current + 1, math.ceil(work / per_replica))
        if load < per_replica * self.down_ratio:
            return math.ceil(work / per_replica)
        return current

    def _decode(self, obs: Observation, kv_target: float) -> int:
        current = max(obs.decode_replicas, 1)
        usage = obs.decode_kv_usage
        if obs.decode_waiting > 0 or usage > kv_target * self.up_ratio:
            return max(current + 1, math.ceil(current * usage / kv_target))
        if usage < kv_target * self.down_ratio:
            return max(1, math.ceil(current * usage / kv_target))
        return current


# ---------------------------------------------------------------- SLA policy


@dataclass
class _Correction:
    factor: float = 1.0

    def update(self, observed_ms: float | None, expected_ms: float) -> None:
        if observed_ms is None or expected_ms <= 0:
            return
        lo, hi = CORRECTION_BOUNDS
        ratio = min(max(observed_ms / expected_ms, lo), hi)
        self.factor += CORRECTION_SMOOTHING * (ratio - self.factor)


@dataclass
class SlaPolicy:
    """Predicted demand / capacity at the targets x correction (observed / expected latency)."""

    capacity: CapacityModel
    prefill: AutoscalingTargets | None
    decode: AutoscalingTargets | None
    horizon_s: float = 30.0  # predict demand this far ahead: about a new replica's start time
    name: str = "sla"
    _prefill_correction: _Correction = field(default_factory=_Correction)
    _decode_correction: _Correction = field(default_factory=_Correction)
    _last: Observation | None = None

    def recommend(self, obs: Observation) -> dict[str, int]:
        rate, remote_tps, local_tps = self._predict(obs)
        self._last = obs
        out: dict[str, int] = {}
        if self.prefill is not None:
            out[PREFILL] = self._prefill(obs, remote_tps)
        if self.decode is not None:
            out[DECODE] = self._decode(obs, rate, local_tps)
        return out

    def _predict(self, obs: Observation) -> tuple[float, float, float]:
        """Arrival rate and prompt-token rates ``horizon_s`` ahead (a replica asked for now serves
        then): the last interval's, plus its trend since the one before, damped, extrapolated
        over the horizon, and kept within [0, 2x the last interval's]."""
        now = _rates(obs)
        if self._last is None:
            return now
        before = _rates(self._last)
        steps = TREND_DAMPING * self.horizon_s / max(obs.interval_s, 1e-9)

        def ahead(n: float, b: float) -> float:
            return min(max(0.0, n + steps * (n - b)), 2 * n)

        return ahead(now[0], before[0]), ahead(now[1], before[1]), ahead(now[2], before[2])

    def _prefill(self, obs: Observation, remote_tokens_per_s: float) -> int:
        targets = self.prefill
        assert targets is not None
        long_input = obs.remote_prefill_tokens / max(obs.arrivals, 1) if obs.remote_prefill_tokens else 0.0
        if obs.prefill_replicas > 0 and long_input > 0:
            self._prefill_correction.update(obs.ttft_p90_ms, self.capacity.expected_ttft_ms(long_input))
        per_replica = self.capacity.prefill_tokens_per_s(targets.ttft_ms)
        # What is queued must drain within an interval, on top of what arrives.
        backlog_per_s = obs.prefill_queue * long_input / max(obs.interval_s, 1e-9)
        need = (remote_tokens_per_s + backlog_per_s) / per_replica * self._prefill_correction.factor
        return math.ceil(need - 1e-9)

    def _decode(self, obs: Observation, rate: float, local_tokens_per_s: float) -> int:
        targets = self.decode
        assert targets is not None
        cap = self.capacity
        expected_itl = cap.expected_itl_ms(targets.itl_ms, targets.kv_usage)
        self._decode_correction.update(obs.itl_p90_ms, expected_itl)
        # Little's law: sequences in decode = arrival rate x time each spends decoding.
        in_decode = rate * obs.mean_output_tokens * expected_itl / 1000.0
        context = obs.mean_input_tokens + obs.mean_output_tokens / 2
        need = in_decode / cap.decode_sequences(context, targets.itl_ms, targets.kv_usage)
        # Prefills that stay on decode workers take their compute from decoding.
        need += local_tokens_per_s / cap.prefill_tokens_per_s(targets.ttft_ms)
        return max(1, math.ceil(need * self._decode_correction.factor - 1e-9))


def _rates(obs: Observation) -> tuple[float, float, float]:
    seconds = max(obs.interval_s, 1e-9)
    return (
        obs.arrivals / seconds,
        obs.remote_prefill_tokens / seconds,
        obs.local_prefill_tokens / seconds,
    )


# ---------------------------------------------------------------- factory


def make_policy(spec: GraphSpec, capacity: CapacityModel | None) -> ScalingPolicy:
    """The policy ``spec.planner.policy`` names, for the roles with autoscaling enabled."""
    autoscaled = spec.autoscaled()
    prefill = autoscaled[Role.PREFILL].targets if Role.PREFILL in autoscaled else None
    decode = autoscaled[Role.DECODE].targets if Role.DECODE in autoscaled else None
    if spec.planner.policy is PlannerPolicy.LOAD:
        return LoadPolicy(prefill, decode)
    if capacity is None:
        raise ValueError("spec.planner.policy sla needs the engine's timing profile (a CapacityModel)")
    return SlaPolicy(capacity, prefill, decode, horizon_s=spec.planner.prediction_horizon_seconds)
