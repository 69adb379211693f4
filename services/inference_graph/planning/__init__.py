"""Autoscaling of prefill and decode replicas (the planner's logic).

- ``observation``: what one planning interval measured;
- ``policies``: plug-ins that turn an observation into raw replica counts
  (``load``: thresholds with hysteresis; ``sla``: predicted demand over measured
  capacity, corrected by observed/expected latency);
- ``stabilizer``: bounds, step limits, stabilization windows, P:D ratio;
- ``planner``: one decision per interval from the two;
- ``simulation``: a deterministic cluster of simulated engines on a simulated
  clock, to test and benchmark the planner over load traces.

The planner never touches processes or Deployments itself: it returns replica
counts, and the one writer of replicas (the operator in Kubernetes, the local
launcher, or the simulation) applies them.
"""

from .observation import Observation
from .planner import Decision, Planner
from .policies import CapacityModel, LoadPolicy, ScalingPolicy, SlaPolicy, make_policy
from .stabilizer import RoleLimits, Stabilizer

__all__ = [
    "CapacityModel",
    "Decision",
    "LoadPolicy",
    "Observation",
    "Planner",
    "RoleLimits",
    "ScalingPolicy",
    "SlaPolicy",
    "Stabilizer",
    "make_policy",
]
