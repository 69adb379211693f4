"""Timing models (pure) and the engine's step clock (generous tolerances, few steps)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from inference_graph import wire
from inference_graph.core.spec import MockerSpec
from inference_graph.engines.mocker.timing import (
    TIMING_MODELS,
    InstantTiming,
    PolynomialTiming,
    TableTiming,
    make_timing,
    step_ms,
)

PROFILE = {
    "prefill": {"tokens": [1, 100, 1000], "ms": [10.0, 20.0, 110.0]},
    "decode": {"batch": [1, 9], "kv_usage": [0.0, 1.0], "ms": [[4.0, 8.0], [6.0, 14.0]]},
}


def test_polynomial_matches_the_design_curves():
    model = PolynomialTiming()
    assert model.prefill_ms(1000) == pytest.approx(4.21e-7 * 1e6 + 0.01518 * 1000 + 16.5)
    assert model.decode_ms(8, 0.5) == pytest.approx(-25.74 * 0.25 + 54.01 * 0.5 + 5.74)
    assert model.decode_ms(1, 0.0) == pytest.approx(5.74)
    assert PolynomialTiming(decode=(0.0, 0.0, 0.2)).decode_ms(1, 0.5) == 1.0  # floor of 1 ms


@pytest.mark.parametrize(
    ("prefill", "batch", "usage", "expected"),
    [
        (0, 0, 0.0, 0.0),
        (1000, 0, 0.3, PolynomialTiming().prefill_ms(1000)),
        (0, 4, 0.3, PolynomialTiming().decode_ms(4, 0.3)),
        (1000, 4, 0.3, PolynomialTiming().prefill_ms(1000) + PolynomialTiming().decode_ms(4, 0.3)),
    ],
)
def test_mixed_step_is_prefill_plus_decode(prefill, batch, usage, expected):
    assert step_ms(PolynomialTiming(), prefill, batch, usage) == pytest.approx(expected)


def test_table_interpolates(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    model = make_timing(MockerSpec(timing="table", timing_table=str(path)))
    assert isinstance(model, TableTiming)
    assert model.prefill_ms(1) == 10.0
    assert model.prefill_ms(550) == pytest.approx(65.0)
    assert model.prefill_ms(2000) == pytest.approx(210.0)  # extrapolated past the last point
    assert model.decode_ms(1, 0.5) == pytest.approx(6.0)
    assert model.decode_ms(5, 0.5) == pytest.approx(8.0)  # bilinear: (6 + 10) / 2
    assert model.decode_ms(100, 2.0) == pytest.approx(14.0)  # clamped to the grid


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"prefill": {}}, "needs 'prefill' and 'decode'"),
        ({**PROFILE, "prefill": {"tokens": [5, 1], "ms": [1, 2]}}, "strictly increasing"),
        ({**PROFILE, "prefill": {"tokens": [1, 5], "ms": [1]}}, "prefill.ms must be a list of 2"),
        (
            {**PROFILE, "decode": {**PROFILE["decode"], "ms": [[1.0, 2.0]]}},
            "decode.ms must be a list of 2 rows",
        ),
    ],
)
def test_table_errors_name_the_problem(profile, message):
    with pytest.raises(ValueError, match=message):
        TableTiming(profile)


def test_table_needs_a_file(tmp_path):
    with pytest.raises(ValueError, match="timingTable is required"):
        make_timing(MockerSpec(timing="table"))
    with pytest.raises(ValueError, match="cannot read"):
        make_timing(MockerSpec(timing="table", timing_table=str(tmp_path / "missing.json")))


def test_registry():
    assert set(TIMING_MODELS) == {"polynomial", "table", "instant"}
    assert isinstance(make_timing(MockerSpec(timing="instant")), InstantTiming)
    assert step_ms(InstantTiming(), 5000, 64, 0.9) == 0.0


async def test_polynomial_step_times_follow_the_model(make_engine):
    engine = await make_engine(timing="polynomial", speedup=2, block_size=16, num_kv_blocks=256)
    prompt = list(range(10, 410))
    start = time.perf_counter()
    frames = [
        f
        async for f in engine.generate(
            wire.GenerateRequest("t", prompt, wire.SamplingOptions(max_tokens=25, temperature=0))
        )
    ]
    elapsed = time.perf_counter() - start
    assert sum(len(f.token_ids) for f in frames) == 25
    log = list(engine.step_log)
    assert len(log) == 25 and log[0][:2] == (400, 0) and all(s[:2] == (0, 1) for s in log[1:])
    model = PolynomialTiming()
    expected = (model.prefill_ms(400) + sum(model.decode_ms(1, s[2]) for s in log[1:])) / 2 / 1000
    assert sum(s[3] for s in log) == pytest.approx(expected)
    # ~85 ms in all. The event loop wakes timers up to ~1 ms late and the step clock
    # catches up; the upper bound is loose for a busy machine.
    assert expected * 0.7 - 0.003 <= elapsed <= expected * 1.3 + 0.1


async def test_instant_engine_runs_zero_time_steps_in_short_bursts(make_engine):
    """Zero-time steps run back to back (tokens leave in few frames, not one per step),
    but the engine still yields to the other tasks in its process every few ms."""
    engine = await make_engine(timing="instant")
    gaps: list[float] = []

    async def ticker():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    request = wire.GenerateRequest("y", list(range(10, 50)), wire.SamplingOptions(max_tokens=2000))
    frames = [frame async for frame in engine.generate(request)]
    task.cancel()
    assert engine.num_steps == 2000
    assert sum(len(f.token_ids) for f in frames) == 2000
    assert len(frames) < 2000 / 4  # several steps' tokens per frame
    assert len(gaps) >= 2  # the other task ran during the request
    # A burst is bounded by mocker.engine._MAX_INSTANT_BURST_S (2 ms) plus one step;
    # the bound here is loose for a busy machine.
    assert max(gaps) < 0.1
