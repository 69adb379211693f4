"""One decision per interval: policy recommendation -> P:D ratio bounds -> stabilizers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.spec import GraphSpec, RatioBounds
from .observation import Observation
from .policies import DECODE, PREFILL, ScalingPolicy
from .stabilizer import RoleLimits, Stabilizer


@dataclass(frozen=True)
class Decision:
    now: float
    replicas: dict[str, int]  # every autoscaled role, changed or not
    reasons: dict[str, str]

    def changed(self, current: dict[str, int]) -> dict[str, int]:
        return {role: n for role, n in self.replicas.items() if current.get(role) != n}


class Planner:
    """Decides replicas for the autoscaled roles; applying them is the caller's job."""

    def __init__(
        self, policy: ScalingPolicy, limits: dict[str, RoleLimits], ratio: RatioBounds | None = None
    ):
        self.policy = policy
        self.ratio = ratio or RatioBounds()
        self._stabilizers = {role: Stabilizer(lim) for role, lim in limits.items()}

    @classmethod
    def for_graph(cls, spec: GraphSpec, policy: ScalingPolicy) -> Planner:
        limits = {role.value: RoleLimits.from_spec(scaling) for role, scaling in spec.autoscaled().items()}
        return cls(policy, limits, spec.planner.prefill_decode_ratio)

    @property
    def roles(self) -> list[str]:
        return list(self._stabilizers)

    def initial_replicas(self, role: str, manual: int) -> int:
        """Where an autoscaled role starts: its manual ``replicas`` within the bounds."""
        return self._stabilizers[role].limits.clamp(manual)

    def decide(self, obs: Observation, current: dict[str, int]) -> Decision:
        recommended = self.policy.recommend(obs)
        recommended = self._within_ratio(recommended, current)
        replicas, reasons = {}, {}
        for role, stabilizer in self._stabilizers.items():
            now_count = current[role]
            replicas[role], reasons[role] = stabilizer.apply(
                obs.now, now_count, recommended.get(role, now_count)
            )
        return Decision(obs.now, replicas, reasons)

    def _within_ratio(self, recommended: dict[str, int], current: dict[str, int]) -> dict[str, int]:
        """Move the prefill recommendation into ``ratio.min/max x decode`` (decode leads)."""
        if PREFILL not in recommended:
            return recommended
        decode = recommended.get(DECODE, current.get(DECODE, 0))
        prefill = recommended[PREFILL]
        if self.ratio.min is not None:
            prefill = max(prefill, math.ceil(self.ratio.min * decode - 1e-9))
        if self.ratio.max is not None:
            prefill = min(prefill, math.floor(self.ratio.max * decode + 1e-9))
        return {**recommended, PREFILL: prefill}
