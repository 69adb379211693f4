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


def test_capacity_comes_from_the_simulated_engines_timing_or_a_profile(tmp_path):
    simulated = disaggregated_spec({"policy": "sla"}, {}, engine={"type": "mocker"})
    model = capacity_model(simulated, kv_blocks=1000)
    assert (
        isinstance(model.timing, PolynomialTiming) and model.kv_tokens == 1000 * simulated.engine.block_size
    )
    profile = tmp_path / "profile.json"
    profile.write_text(
        '{"prefill": {"tokens": [1, 2048], "ms": [15.0, 70.0]},'
        ' "decode": {"batch": [1, 64], "kv_usage": [0.0, 1.0], "ms": [[6.0, 9.0], [10.0, 20.0]]}}'
    )
    vllm = disaggregated_spec({"policy": "sla", "profile": str(profile)}, {})
    assert capacity_model(vllm, kv_blocks=1000).timing.prefill_ms(2048) == 70.0
    assert capacity_model(disaggregated_spec({"policy": "load"}, {}), kv_blocks=1000) is None
    # sla with vLLM workers and no profile: refused when the graph is read, naming the field
    with pytest.raises(SpecError, match=r"spec\.planner\.profile"):
        disaggregated_spec({"policy": "sla"}, {"decode": {"autoscaling": {"enabled": True}}})


async def test_the_collector_takes_a_baseline_first_and_raises_when_the_frontend_is_unreachable():
    import socket

    from prometheus_client import start_http_server

    from inference_graph import wire
    from inference_graph.roles.planner.collect import Collector

    metrics = FrontendMetrics(CollectorRegistry(), remote_prefill_over=1000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        collector = Collector(f"http://127.0.0.1:{port}/metrics", interval_s=10)
        collector.on_load(
            wire.LoadMetrics("d-1", 0.0, running=3, waiting=1, kv_usage=0.5, prefill_queue_depth=4)
        )
        assert await collector.observe(0.0, [], ["d-1"]) is None  # baseline
        observer = metrics.start("completions", "m", 0.0)
        observer.usage(prompt_tokens=2000, completion_tokens=20, cached_tokens=0)
        observer.finish()
        obs = await collector.observe(10.0, [], ["d-1", "d-2"])  # d-2 registered, no load report yet
        assert (obs.arrivals, obs.remote_prefill_tokens, obs.mean_output_tokens) == (1, 2000, 20)
        assert (obs.decode_replicas, obs.decode_running, obs.decode_waiting, obs.prefill_queue) == (
            2,
            3,
            1,
            4,
        )
    finally:
        server.shutdown()
        thread.join()
    with pytest.raises(OSError):
        await Collector(f"http://127.0.0.1:{port}/metrics", interval_s=10).observe(0.0, [], [])
