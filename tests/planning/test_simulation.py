"""The planner over load traces on the simulated cluster (deterministic, simulated clock).

Scenario: quiet -> a burst of long prompts -> a phase of long outputs -> idle, on
small simulated engines (so the trace runs in seconds). What must hold: prefill
scales first on the burst, decode on the long outputs, both return to their
minimum when idle, no request is lost, and no role changes direction twice
within a stabilization window.
"""

from __future__ import annotations

import pytest

from inference_graph.engines.mocker.timing import PolynomialTiming
from inference_graph.planning import Planner, make_policy
from inference_graph.planning.simulation import Cluster, ClusterConfig, EngineShape, Phase, SimResult

from .common import disaggregated_spec

WINDOW = 30.0
ENGINE = EngineShape(
    PolynomialTiming(),
    num_kv_blocks=8192,
    block_size=16,
    max_num_seqs=32,
    max_batched_tokens=2048,
    transfer_s_per_token=1e-6,
)
TRACE = [
    Phase("quiet", 60, 1, 2000, 50),
    Phase("ramp", 20, 6, 8000, 50),
    Phase("burst", 60, 15, 8000, 50),
    Phase("long-output", 90, 5, 500, 800),
    Phase("idle", 120, 0, 1, 1),
]


def phase_span(name: str) -> tuple[float, float]:
    start = 0.0
    for phase in TRACE:
        if phase.name == name:
            return start, start + phase.seconds
        start += phase.seconds
    raise KeyError(name)


def graph(policy: str):
    autoscaling = {"enabled": True, "maxReplicas": 8, "scaleDownStabilizationSeconds": WINDOW}
    return disaggregated_spec(
        {"policy": policy, "intervalSeconds": 5},
        {
            "prefill": {"replicas": 1, "autoscaling": {**autoscaling, "minReplicas": 0}},
            "decode": {"replicas": 1, "autoscaling": {**autoscaling, "minReplicas": 1}},
        },
        engine={"type": "mocker"},  # the planner plans from the simulated engine's timing model
    )


def simulate(policy: str) -> SimResult:
    spec = graph(policy)
    planner = Planner.for_graph(spec, make_policy(spec, ENGINE.capacity()))
    config = ClusterConfig(
        ENGINE, startup_s=10, interval_s=spec.planner.interval_seconds, max_prefill_queue_size=8
    )
    return Cluster(config, {"prefill": 1, "decode": 1}, planner).run(TRACE)


_RESULTS: dict[str, SimResult] = {}


def simulated(policy: str) -> SimResult:
    """One run per policy for the whole module (each takes a few seconds)."""
    if policy not in _RESULTS:
        _RESULTS[policy] = simulate(policy)
    return _RESULTS[policy]


@pytest.fixture(params=["sla", "load"])
def result(request) -> tuple[str, SimResult]:
    return request.param, simulated(request.param)


def ups(result: SimResult, role: str, span: tuple[float, float]) -> list[dict]:
    return [
        d
        for d in result.decisions
        if d["role"] == role and d["to"] > d["from"] and span[0] <= d["time"] < span[1]
    ]


def test_every_request_completes(result):
    _, res = result
    assert res.requests and all(r.done and r.tokens == r.output_tokens for r in res.requests)


def test_no_role_changes_direction_twice_within_a_window(result):
    _, res = result
    for role in ("prefill", "decode"):
        changes = [d for d in res.decisions if d["role"] == role]
        last_direction, last_time = 0, None
        for d in changes:
            direction = 1 if d["to"] > d["from"] else -1
            if last_direction and direction != last_direction:
                assert d["time"] - last_time >= WINDOW, (role, d)
            last_direction, last_time = direction, d["time"]


def test_idle_returns_both_roles_to_their_minimum(result):
    _, res = result
    end = res.timeline[-1]
    assert end["time"] >= phase_span("idle")[0] + 60
    assert (end["prefill_replicas"], end["decode_replicas"]) == (0, 1)


def test_burst_of_long_prompts_scales_prefill_first(result):
    _, res = result
    start, end = phase_span("ramp")[0], phase_span("burst")[1]
    prefill_ups, decode_ups = ups(res, "prefill", (start, end)), ups(res, "decode", (start, end))
    assert prefill_ups
    assert not decode_ups or prefill_ups[0]["time"] <= decode_ups[0]["time"]


def test_the_sla_policy_gives_a_burst_of_long_prompts_mostly_prefill():
    res = simulated("sla")
    start, end = phase_span("ramp")[0], phase_span("burst")[1]
    in_burst = [row for row in res.timeline if start <= row["time"] < end]
    assert max(r["prefill_replicas"] for r in in_burst) > max(r["decode_replicas"] for r in in_burst)


def test_long_outputs_scale_decode(result):
    _, res = result
    span = phase_span("long-output")
    assert ups(res, "decode", span)
    assert not ups(res, "prefill", span)
    in_phase = [row for row in res.timeline if span[0] <= row["time"] < span[1]]
    assert max(r["decode_replicas"] for r in in_phase) > max(r["prefill_replicas"] for r in in_phase[-3:])


def test_the_sla_policy_keeps_most_requests_within_targets():
    res = simulated("sla")
    # Measured 0.89 on this trace: the misses are TTFTs in the ramp's and burst's first
    # seconds, before new replicas serve (10 s); every other phase is at 1.0.
    assert res.attainment(ttft_ms=500, itl_ms=50) >= 0.85
    static = (8 + 8) * res.timeline[-1]["time"]
    assert sum(res.replica_seconds.values()) < 0.6 * static
