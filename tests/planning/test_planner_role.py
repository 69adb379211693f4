"""The planner role's measurements (frontend scrape differences) and its capacity source."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from inference_graph.core.spec import SpecError
from inference_graph.engines.mocker.timing import PolynomialTiming
from inference_graph.roles.frontend.metrics import FrontendMetrics
from inference_graph.roles.planner.__main__ import capacity_model
from inference_graph.roles.planner.collect import FrontendSample, quantile_ms

from .common import disaggregated_spec


def scrape(metrics: FrontendMetrics) -> FrontendSample:
    return FrontendSample.parse(generate_latest(metrics.registry).decode())


def test_an_interval_is_the_difference_of_two_scrapes():
    metrics = FrontendMetrics(CollectorRegistry(), remote_prefill_over=1000)
    before = scrape(metrics)
    for ttft in (0.05, 0.07, 0.2, 0.9):
        observer = metrics.start("completions", "m", 0.0)
        metrics.ttft.labels("m").observe(ttft)
        observer.usage(prompt_tokens=3000, completion_tokens=10, cached_tokens=0)
        observer.finish()
    after = scrape(metrics)
    assert after.requests - before.requests == 4
    assert after.remote_tokens - before.remote_tokens == 12_000 and after.local_tokens == 0
    assert quantile_ms(before.ttft_buckets, after.ttft_buckets, 0.5) == pytest.approx(75)  # bucket bound
    assert quantile_ms(before.ttft_buckets, after.ttft_buckets, 0.9) == pytest.approx(1000)
    assert quantile_ms(after.ttft_buckets, after.ttft_buckets, 0.9) is None  # nothing new observed


def test_capacity_comes_from_the_simulated_engines_timing_or_a_profile():
    simulated = disaggregated_spec({"policy": "sla"}, {}, engine={"type": "mocker"})
    model = capacity_model(simulated, kv_blocks=1000)
    assert (
        isinstance(model.timing, PolynomialTiming) and model.kv_tokens == 1000 * simulated.engine.block_size
    )
    vllm = disaggregated_spec({"policy": "sla"}, {})
    with pytest.raises(SpecError) as caught:
        capacity_model(vllm, kv_blocks=1000)
    assert caught.value.field == "spec.planner.profile"
    assert capacity_model(disaggregated_spec({"policy": "load"}, {}), kv_blocks=1000) is None
