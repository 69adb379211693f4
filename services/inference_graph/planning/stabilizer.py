"""From a policy's raw recommendation to the replicas to apply, one role at a time.

Rules, in order (Kubernetes' HPA behaviour, plus a direction guard):

1. bounds: ``minReplicas <= r <= maxReplicas``;
2. stabilization windows: scaling up goes to the *lowest* recommendation of the
   last ``scaleUpStabilizationSeconds``, scaling down to the *highest* of the
   last ``scaleDownStabilizationSeconds`` (a brief dip or spike does not move it);
3. step limits: at most ``maxScaleUpStep`` added, ``maxScaleDownStep`` removed;
4. direction guard: no change of direction (up after down, down after up)
   within ``scaleDownStabilizationSeconds`` of the last change, so a role
   changes direction at most once per window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..core.spec import AutoscalingSpec


@dataclass(frozen=True)
class RoleLimits:
    min_replicas: int
    max_replicas: int
    up_window_s: float
    down_window_s: float
    max_up_step: int
    max_down_step: int

    @classmethod
    def from_spec(cls, spec: AutoscalingSpec) -> RoleLimits:
        return cls(
            spec.min_replicas,
            spec.max_replicas,
            spec.scale_up_stabilization_seconds,
            spec.scale_down_stabilization_seconds,
            spec.max_scale_up_step,
            spec.max_scale_down_step,
        )

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)


@dataclass
class Stabilizer:
    limits: RoleLimits
    _history: deque[tuple[float, int]] = field(default_factory=deque)  # (time, bounded recommendation)
    _last_change: tuple[float, int] | None = None  # (time, +1 up / -1 down)

    def apply(self, now: float, current: int, recommended: int) -> tuple[int, str]:
        """Replicas to set now, and why (for logs and status)."""
        limits = self.limits
        bounded = limits.clamp(recommended)
        self._remember(now, bounded)
        if bounded > current:
            target = max(current, min(r for t, r in self._history if t >= now - limits.up_window_s))
            target = min(target, current + limits.max_up_step)
        elif bounded < current:
            target = min(current, max(r for t, r in self._history if t >= now - limits.down_window_s))
            target = max(target, current - limits.max_down_step)
        else:
            target = current
        target = limits.clamp(target)  # a current count outside the bounds comes back inside
        if target == current:
            return current, f"hold at {current} (recommended {recommended})"
        direction = 1 if target > current else -1
        if self._last_change is not None:
            changed_at, last_direction = self._last_change
            if direction != last_direction and now - changed_at < limits.down_window_s:
                return current, f"hold at {current}: changed direction {now - changed_at:.0f}s ago"
        self._last_change = (now, direction)
        return target, f"{current} -> {target} (recommended {recommended})"

    def _remember(self, now: float, replicas: int) -> None:
        self._history.append((now, replicas))
        horizon = now - max(self.limits.up_window_s, self.limits.down_window_s)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
