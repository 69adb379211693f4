"""The planner's pure parts: stabilizer rules, P:D ratio bounds, the two policies."""

from __future__ import annotations

import pytest

from inference_graph.core.spec import AutoscalingTargets, RatioBounds
from inference_graph.engines.mocker.timing import PolynomialTiming
from inference_graph.planning import (
    CapacityModel,
    LoadPolicy,
    Observation,
    Planner,
    RoleLimits,
    SlaPolicy,
    Stabilizer,
    make_policy,
)

from .common import disaggregated_spec

LIMITS = RoleLimits(
    min_replicas=1, max_replicas=10, up_window_s=0, down_window_s=60, max_up_step=3, max_down_step=1
)


def observe(now=0.0, **fields) -> Observation:
    base = dict(
        now=now,
        interval_s=10.0,
        arrivals=0,
        remote_prefill_tokens=0,
        local_prefill_tokens=0,
        mean_input_tokens=0.0,
        mean_output_tokens=0.0,
        prefill_replicas=1,
        prefill_queue=0,
        prefill_in_progress=0,
        decode_replicas=1,
        decode_kv_usage=0.0,
        decode_running=0,
        decode_waiting=0,
        ttft_p90_ms=None,
        itl_p90_ms=None,
    )
    return Observation(**{**base, **fields})


def test_bounds_and_step_limits():
    s = Stabilizer(LIMITS)
    assert s.apply(0, 2, 50)[0] == 5  # +3 at most
    assert s.apply(10, 5, 50)[0] == 8
    assert s.apply(20, 8, 50)[0] == 10  # maxReplicas
    assert Stabilizer(LIMITS).apply(0, 1, 0)[0] == 1  # minReplicas


def test_scale_down_takes_the_highest_recommendation_of_its_window():
    s = Stabilizer(LIMITS)
    s.apply(0, 6, 6)
    assert s.apply(10, 6, 2)[0] == 6  # 6 was recommended 10 s ago: hold
    assert s.apply(70, 6, 2)[0] == 5  # the window has passed: one step down


def test_scale_up_takes_the_lowest_recommendation_of_its_window():
    s = Stabilizer(RoleLimits(1, 10, up_window_s=30, down_window_s=60, max_up_step=5, max_down_step=1))
    s.apply(0, 2, 2)
    assert s.apply(10, 2, 6)[0] == 2  # 2 was recommended 10 s ago
    assert s.apply(40, 2, 6)[0] == 6


def test_direction_changes_at_most_once_per_window():
    s = Stabilizer(RoleLimits(1, 10, up_window_s=0, down_window_s=60, max_up_step=5, max_down_step=5))
    assert s.apply(0, 6, 6)[0] == 6
    assert s.apply(61, 6, 2)[0] == 2  # down, once the window no longer holds the 6
    count, reason = s.apply(70, 2, 8)  # up again 9 s later: held
    assert count == 2 and "changed direction" in reason
    assert s.apply(122, 2, 8)[0] == 7  # a window after the last change


def test_ratio_bounds_move_prefill_with_decode():
    class Fixed:
        name = "fixed"

        def recommend(self, obs):
            return {"prefill": 0, "decode": 6}

    planner = Planner(Fixed(), {"prefill": LIMITS, "decode": LIMITS}, RatioBounds(min=0.5, max=1.0))
    decision = planner.decide(observe(), {"prefill": 1, "decode": 3})
    assert decision.replicas == {"prefill": 3, "decode": 6}  # prefill >= 0.5 x 6


def test_load_policy_hysteresis():
    policy = LoadPolicy(AutoscalingTargets(queuePerReplica=2), AutoscalingTargets(kvUsage=0.6))
    assert policy.recommend(observe(prefill_replicas=2, prefill_queue=8, prefill_in_progress=2)) == {
        "prefill": 5,
        "decode": 1,
    }
    # between half the target and 1.1x the target: hold
    assert policy.recommend(observe(prefill_replicas=2, prefill_queue=2, decode_kv_usage=0.5))["prefill"] == 2
    assert policy.recommend(observe(prefill_replicas=4, prefill_queue=1))["prefill"] == 1
    assert policy.recommend(observe(decode_replicas=2, decode_kv_usage=0.9))["decode"] == 3
    assert policy.recommend(observe(decode_replicas=2, decode_kv_usage=0.5, decode_waiting=3))["decode"] == 3
    assert policy.recommend(observe(decode_replicas=4, decode_kv_usage=0.1))["decode"] == 1
    # prefill at zero: long prompts arriving are the work that brings it back
    assert policy.recommend(observe(prefill_replicas=0, remote_prefill_tokens=5000))["prefill"] == 1


CAPACITY = CapacityModel(PolynomialTiming(), kv_tokens=1 << 20, max_num_seqs=256, max_batched_tokens=8192)

# Hand-computed from the design curve prefill_ms(T) = 4.21e-7 T^2 + 0.01518 T + 16.5 (not from the code):
# prefill_ms(8192) = 4.21e-7 * 67108864 + 0.01518 * 8192 + 16.5 = 28.252832 + 124.35456 + 16.5 = 169.107392 ms,
# so a 500 ms TTFT budget (half of it: 250 ms) fits a full 8192-token step, and one replica computes
# 0.75 (utilisation) * 8192 tokens / 0.169107392 s = 36331.94 tokens/s.
PREFILL_TOKENS_PER_S = 36331.94


def test_capacity_from_the_timing_model():
    assert CAPACITY.prefill_batch(500) == 8192  # 169.1 ms <= 250 ms: a full step fits
    assert CAPACITY.prefill_tokens_per_s(500) == pytest.approx(PREFILL_TOKENS_PER_S)
    # A tight budget means smaller steps: 100 ms leaves 50 ms, and 4.21e-7 T^2 + 0.01518 T + 16.5 <= 50
    # holds up to T = 2086.15 (prefill_ms(2086) = 49.9974 ms, prefill_ms(2087) = 50.0144 ms).
    assert CAPACITY.prefill_batch(100) == 2086
    # KV-bound decode: 1M tokens x 0.7 usage / 10k-token contexts = 73 sequences, x 0.8 headroom
    assert CAPACITY.decode_sequences(10_000, itl_ms=50, kv_target=0.7) == 58


def test_sla_policy_sizes_roles_from_demand():
    policy = SlaPolicy(CAPACITY, AutoscalingTargets(), AutoscalingTargets())
    per_prefill = PREFILL_TOKENS_PER_S
    obs = observe(
        arrivals=100,
        remote_prefill_tokens=int(3 * per_prefill * 10),  # 3 replicas' worth over the 10 s interval
        mean_input_tokens=3000,
        mean_output_tokens=150,
        prefill_replicas=3,
    )
    assert policy.recommend(obs)["prefill"] == 3
    # twice the demand: the trend (+3 replicas' worth per 10 s interval), damped by half,
    # extrapolated over the 30 s horizon: 6 + 0.5 x 3 x 3 = 10.5 replicas' worth
    busier = observe(
        now=10,
        arrivals=200,
        remote_prefill_tokens=int(6 * per_prefill * 10),
        mean_input_tokens=3000,
        mean_output_tokens=150,
        prefill_replicas=3,
    )
    assert policy.recommend(busier)["prefill"] == 11


def test_sla_policy_corrects_by_observed_latency():
    policy = SlaPolicy(CAPACITY, AutoscalingTargets(), AutoscalingTargets())
    per_prefill = PREFILL_TOKENS_PER_S
    demand = dict(
        arrivals=100,
        remote_prefill_tokens=int(2 * per_prefill * 10),
        mean_input_tokens=3000,
        prefill_replicas=2,
    )
    assert policy.recommend(observe(**demand))["prefill"] == 2
    # ~7266-token prompts: the model expects a TTFT of ~155 ms (prefill_ms(7266) = 149.0 ms, + transfer,
    # + one 5.74 ms decode step); 1 s observed is well past twice that
    slow = 1000.0
    # the ratio is bounded at 2, and the factor moves halfway there: 1 -> 1.5
    assert policy.recommend(observe(now=10, ttft_p90_ms=slow, **demand))["prefill"] == 3


def test_policy_from_the_spec():
    graph = disaggregated_spec(
        {"policy": "sla"},
        {"prefill": {"autoscaling": {"enabled": True, "minReplicas": 0}}},
        engine={"type": "mocker"},
    )
    policy = make_policy(graph, CAPACITY)
    assert isinstance(policy, SlaPolicy) and policy.decode is None and policy.prefill is not None
    with pytest.raises(ValueError, match="timing profile"):
        make_policy(graph, None)
    planner = Planner.for_graph(graph, policy)
    assert planner.roles == ["prefill"] and planner.initial_replicas("prefill", 9) == 8
