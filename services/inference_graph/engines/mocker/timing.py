"""How long a simulated engine step takes: plug-in timing models.

A model answers two questions, both in milliseconds of real engine time:

- ``prefill_ms(tokens)``: computing ``tokens`` uncached prompt tokens (summed
  over every sequence prefilling in the step: "batch x uncached tokens");
- ``decode_ms(batch, kv_usage)``: one decode token for each of ``batch``
  sequences with a fraction ``kv_usage`` of the KV blocks in use.

Mix rule (``step_ms``): a step that does both (chunked prefill next to running
decodes) costs ``prefill_ms + decode_ms``. It over-counts the fixed per-step
overhead once, but it reproduces what the layers above must cope with: decode
inter-token latency grows while prefills share the batch (taking the max would
hide that), and a prefill-only or decode-only step costs exactly its curve.

``speedup`` (``engine.mocker.speedup``) is applied by the engine: the sleep is
``step_ms / speedup``.

Registry: ``TIMING_MODELS`` maps ``engine.mocker.timing`` to a factory taking
the ``MockerSpec``; add a model by adding one entry.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ...core.spec import MockerSpec


class TimingModel(Protocol):
    name: str

    def prefill_ms(self, tokens: int) -> float: ...

    def decode_ms(self, batch: int, kv_usage: float) -> float: ...


def step_ms(model: TimingModel, prefill_tokens: int, decode_batch: int, kv_usage: float) -> float:
    """Milliseconds for one step (see the mix rule above)."""
    ms = 0.0
    if prefill_tokens > 0:
        ms += model.prefill_ms(prefill_tokens)
    if decode_batch > 0:
        ms += model.decode_ms(decode_batch, kv_usage)
    return ms


class PolynomialTiming:
    """Curves fitted on a GPU engine (DESIGN.md section 5, "a simulated engine timing model in common use"):
    prefill_ms = 4.21e-7 T^2 + 0.01518 T + 16.5; decode_ms = max(1, -25.74 u^2 + 54.01 u + 5.74)."""

    name = "polynomial"

    def __init__(
        self,
        prefill: tuple[float, float, float] = (4.21e-7, 0.01518, 16.5),
        decode: tuple[float, float, float] = (-25.74, 54.01, 5.74),
    ):
        self.prefill = prefill
        self.decode = decode

    def prefill_ms(self, tokens: int) -> float:
        a, b, c = self.prefill
        return a * tokens * tokens + b * tokens + c

    def decode_ms(self, batch: int, kv_usage: float) -> float:
        a, b, c = self.decode
        return max(1.0, a * kv_usage * kv_usage + b * kv_usage + c)


class InstantTiming:
    """No simulated time: steps still yield to the event loop (measures the serving path)."""

    name = "instant"

    def prefill_ms(self, tokens: int) -> float:
        return 0.0

    def decode_ms(self, batch: int, kv_usage: float) -> float:
        return 0.0


def _interp(xs: list[float], ys: list[float], x: float, extrapolate: bool = False) -> float:
    """Piecewise-linear interpolation; clamped outside ``xs`` unless ``extrapolate`` (beyond the end)."""
    if len(xs) == 1:
        return ys[0]
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1] and not extrapolate:
        return ys[-1]
    i = min(bisect.bisect_right(xs, x), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _axis(data: dict, key: str, where: str) -> list[float]:
    values = data.get(key)
    if not isinstance(values, list) or not values or not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"{where}.{key} must be a non-empty list of numbers")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{where}.{key} must be strictly increasing")
    return [float(v) for v in values]


class TableTiming:
    """A measured profile (JSON), interpolated linearly::

        {"prefill": {"tokens": [1, 512, 2048], "ms": [15.0, 25.0, 70.0]},
         "decode": {"batch": [1, 16, 64], "kv_usage": [0.0, 1.0],
                    "ms": [[6.0, 9.0], [7.0, 12.0], [10.0, 20.0]]}}

    ``decode.ms[i][j]`` is for ``batch[i]`` and ``kv_usage[j]`` (bilinear in
    between, clamped outside the grid). Prefill extrapolates linearly past the
    last token count (longer prompts cost more) and clamps below the first.
    """

    name = "table"

    def __init__(self, profile: dict, source: str = "timing table"):
        try:
            prefill = profile["prefill"]
            decode = profile["decode"]
        except (KeyError, TypeError):
            raise ValueError(f"{source}: needs 'prefill' and 'decode' objects") from None
        self.prefill_tokens = _axis(prefill, "tokens", f"{source}: prefill")
        self.prefill_values = _axis_values(prefill, len(self.prefill_tokens), f"{source}: prefill")
        self.batch = _axis(decode, "batch", f"{source}: decode")
        self.usage = _axis(decode, "kv_usage", f"{source}: decode")
        grid = decode.get("ms")
        if not (isinstance(grid, list) and len(grid) == len(self.batch)) or any(
            not isinstance(row, list) or len(row) != len(self.usage) for row in grid
        ):
            raise ValueError(
                f"{source}: decode.ms must be a list of {len(self.batch)} rows of {len(self.usage)}"
            )
        self.grid = [[float(v) for v in row] for row in grid]

    @classmethod
    def from_file(cls, path: str) -> TableTiming:
        try:
            profile = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"engine.mocker.timingTable: cannot read {path}: {exc}") from None
        return cls(profile, source=path)

    def prefill_ms(self, tokens: int) -> float:
        return max(0.0, _interp(self.prefill_tokens, self.prefill_values, tokens, extrapolate=True))

    def decode_ms(self, batch: int, kv_usage: float) -> float:
        per_batch = [_interp(self.usage, row, kv_usage) for row in self.grid]
        return max(0.0, _interp(self.batch, per_batch, batch))


def _axis_values(data: dict, n: int, where: str) -> list[float]:
    values = data.get("ms")
    if (
        not isinstance(values, list)
        or len(values) != n
        or not all(isinstance(v, int | float) for v in values)
    ):
        raise ValueError(f"{where}.ms must be a list of {n} numbers")
    return [float(v) for v in values]


def _table(spec: MockerSpec) -> TimingModel:
    if not spec.timing_table:
        raise ValueError("engine.mocker.timingTable is required with engine.mocker.timing: table")
    return TableTiming.from_file(spec.timing_table)


TIMING_MODELS: dict[str, Callable[[MockerSpec], TimingModel]] = {
    "polynomial": lambda spec: PolynomialTiming(),
    "table": _table,
    "instant": lambda spec: InstantTiming(),
}


def make_timing(spec: MockerSpec) -> TimingModel:
    kind = getattr(spec.timing, "value", spec.timing)
    try:
        factory = TIMING_MODELS[kind]
    except KeyError:
        raise ValueError(
            f"engine.mocker.timing: unknown timing model {kind!r}; known: {', '.join(TIMING_MODELS)}"
        ) from None
    return factory(spec)
