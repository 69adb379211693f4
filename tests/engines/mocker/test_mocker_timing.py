"""Timing models (pure) and the engine's step clock, run on a virtual loop clock (no wall-clock bounds)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

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


# Hand-computed from the design curves (DESIGN.md section 5), not from the code's coefficients:
# prefill_ms(T) = 4.21e-7 T^2 + 0.01518 T + 16.5; decode_ms(u) = max(1, -25.74 u^2 + 54.01 u + 5.74).
PREFILL_1000_MS = 32.101  # 0.421 + 15.18 + 16.5
PREFILL_400_MS = 22.63936  # 4.21e-7 * 160000 = 0.06736; 0.01518 * 400 = 6.072; + 16.5
DECODE_HALF_MS = 26.31  # -25.74 * 0.25 = -6.435; 54.01 * 0.5 = 27.005; + 5.74
DECODE_03_MS = 19.6264  # -25.74 * 0.09 = -2.3166; 54.01 * 0.3 = 16.203; + 5.74
DECODE_FULL_MS = 34.01  # -25.74 + 54.01 + 5.74


def test_polynomial_matches_the_design_curves():
    model = PolynomialTiming()
    assert model.prefill_ms(1000) == pytest.approx(PREFILL_1000_MS)
    assert model.prefill_ms(400) == pytest.approx(PREFILL_400_MS)
    assert model.decode_ms(8, 0.5) == pytest.approx(DECODE_HALF_MS)
    assert model.decode_ms(1, 0.0) == pytest.approx(5.74)
    assert model.decode_ms(64, 1.0) == pytest.approx(DECODE_FULL_MS)
    assert PolynomialTiming(decode=(0.0, 0.0, 0.2)).decode_ms(1, 0.5) == 1.0  # floor of 1 ms


@pytest.mark.parametrize(
    ("prefill", "batch", "usage", "expected"),
    [
        (0, 0, 0.0, 0.0),
        (1000, 0, 0.3, PREFILL_1000_MS),
        (0, 4, 0.3, DECODE_03_MS),
        (1000, 4, 0.3, 51.7274),  # PREFILL_1000_MS + DECODE_03_MS = 32.101 + 19.6264
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


class VirtualLoopClock:
    """The running loop's clock, replaced for one test: it moves only by ``asyncio.sleep`` (the
    sleep returns at once, having advanced the clock by its delay) and by ``per_read`` on every
    read (a CPU that takes that long between two looks at the clock). Restored on exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_read: float = 0.0) -> None:
        self.loop, self.per_read = loop, per_read
        self.now = loop.time()
        self.sleeps: list[float] = []

    def time(self) -> float:
        self.now += self.per_read
        return self.now

    async def sleep(self, delay: float, result=None):
        self.sleeps.append(delay)
        self.now += max(0.0, delay)
        return await _real_sleep(0, result)

    @contextlib.contextmanager
    def installed(self, monkeypatch):
        with monkeypatch.context() as patch:
            patch.setattr(self.loop, "time", self.time)
            patch.setattr(asyncio, "sleep", self.sleep)
            yield self


_real_sleep = asyncio.sleep

# One request of 400 prompt tokens and 25 output tokens, speedup 2, 256 blocks of 16:
# step 1 prefills 400 tokens (25 blocks, kv_usage 25/256): 22.63936 ms / 2 = 11.31968 ms;
# decode steps compute positions 400..423: 16 of them in block 26 (kv_usage 26/256 = 0.1015625),
#   decode_ms = -25.74 * 0.01031494140625 + 54.01 * 0.1015625 + 5.74 = 10.959884033 ms, / 2 = 5.4799420166 ms;
# then 8 in block 27 (kv_usage 27/256 = 0.10546875),
#   decode_ms = -25.74 * 0.0111236572265625 + 54.01 * 0.10546875 + 5.74 = 11.150044250 ms, / 2 = 5.5750221252 ms.
STEP_SECONDS = [0.01131968] + [0.0054799420166] * 16 + [0.0055750221252] * 8
TOTAL_SECONDS = 0.1435989293  # 11.31968 + 16 * 5.4799420166 + 8 * 5.5750221252 ms


async def test_polynomial_step_times_follow_the_model(make_engine, monkeypatch):
    engine = await make_engine(timing="polynomial", speedup=2, block_size=16, num_kv_blocks=256)
    prompt = list(range(10, 410))
    clock = VirtualLoopClock(asyncio.get_running_loop())
    with clock.installed(monkeypatch):
        start = clock.now
        frames = [
            f
            async for f in engine.generate(
                wire.GenerateRequest("t", prompt, wire.SamplingOptions(max_tokens=25, temperature=0))
            )
        ]
        elapsed = clock.now - start
    assert sum(len(f.token_ids) for f in frames) == 25
    log = list(engine.step_log)
    assert [s[:3] for s in log] == [(400, 0, 25 / 256)] + [(0, 1, 26 / 256)] * 16 + [(0, 1, 27 / 256)] * 8
    assert [s[3] for s in log] == pytest.approx(STEP_SECONDS)  # the modelled time of each step
    # The engine spent exactly the modelled time on the loop's clock, one sleep per step, in order.
    assert clock.sleeps == pytest.approx(STEP_SECONDS)
    assert elapsed == pytest.approx(TOTAL_SECONDS)


async def test_instant_engine_runs_zero_time_steps_in_short_bursts(make_engine, monkeypatch):
    """Zero-time steps run back to back (tokens leave in few frames, not one per step), but the
    engine still yields to the other tasks in its process once a burst reaches
    mocker.engine._MAX_INSTANT_BURST_S (2 ms). The loop clock is virtual and advances 0.1 ms per
    read, so a burst is at most 2 ms / 0.1 ms + 1 = 21 steps (other reads only shorten it)."""
    engine = await make_engine(timing="instant")
    steps_seen: list[int] = []  # engine.num_steps each time the other task ran

    async def ticker():
        while True:
            steps_seen.append(engine.num_steps)
            await _real_sleep(0)

    clock = VirtualLoopClock(asyncio.get_running_loop(), per_read=0.0001)
    with clock.installed(monkeypatch):
        task = asyncio.create_task(ticker())
        request = wire.GenerateRequest("y", list(range(10, 50)), wire.SamplingOptions(max_tokens=2000))
        frames = [frame async for frame in engine.generate(request)]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert engine.num_steps == 2000
    assert sum(len(f.token_ids) for f in frames) == 2000
    assert len(frames) < 2000 / 4  # several steps' tokens per frame
    bursts = [b - a for a, b in itertools.pairwise(steps_seen) if b > a]
    assert steps_seen[-1] == 2000 and len(bursts) >= 2000 // 21  # the other task ran between bursts
    assert max(bursts) <= 21, max(bursts)  # no burst starves the other tasks
    assert max(bursts) > 1  # and steps do run back to back
