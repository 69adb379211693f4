"""Prometheus metrics of the frontend, on a registry the app owns (no globals).

Latencies are measured in this process, from the moment the request handler
starts (the body has been read) to the frames the processor delivers:

- TTFT: request arrival -> first *content* frame (a frame with tokens or text)
  of any choice.
- ITL: gap between successive content frames of the same choice. A frame may
  carry several tokens; the gap is divided by its ``num_tokens`` and observed
  once per token, so the histogram is token-weighted like vLLM's. Tokens
  that arrive in the same frame as the first token are not observed.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "FrontendMetrics", "RequestObserver"]

_TTFT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    20,
    40,
    80,
)
_ITL_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
)
_ITL_BUCKETS += (0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

CLIENT_CLOSED = 499  # status recorded when the client went away (nginx's convention)


class FrontendMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, remote_prefill_over: int | None = None
    ) -> None:
        """``remote_prefill_over``: the conditional-disaggregation length (maxLocalPrefillLength);
        uncached prompt tokens are counted as ``prefill="remote"`` above it, else ``"local"``."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.remote_prefill_over = remote_prefill_over
        r = self.registry
        p = "ig_frontend_"
        self.requests = Counter(
            p + "requests", "Requests answered, by endpoint, model and HTTP status.",
            ["endpoint", "model", "status"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            p + "requests_in_flight", "Requests being served.", ["endpoint", "model"], registry=r
        )
        self.duration = Histogram(
            p + "request_duration_seconds", "Request arrival to last byte.",
            ["endpoint", "model"], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            p + "time_to_first_token_seconds", "Request arrival to first content frame.",
            ["model"], buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            p + "inter_token_latency_seconds", "Gap between tokens of a choice (per token).",
            ["model"], buckets=_ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens.", ["model"], registry=r)
        self.cached_tokens = Counter(
            p + "cached_prompt_tokens", "Prompt tokens served from the prefix cache.", ["model"], registry=r
        )
        self.completion_tokens = Counter(p + "completion_tokens", "Generated tokens.", ["model"], registry=r)
        self.migrations = Counter(
            p + "migrations",
            "Times a choice of a completed request moved to another worker after its worker failed "
            "mid-stream (spec.routing.migrationLimit).",
            ["model"],
            registry=r,
        )
        # The planner sizes prefill from the first and decode's local prefills from the second.
        self.uncached_prompt_tokens = Counter(
            p + "uncached_prompt_tokens",
            "Prompt tokens not served from the prefix cache, by where the conditional-disaggregation "
            "rule prefills such a prompt (remote: longer than maxLocalPrefillLength).",
            ["model", "prefill"],
            registry=r,
        )

    def count(self, endpoint: str, model: str, status: int) -> None:
        """Count a request answered without reaching the processor (e.g. rejected)."""
        self.requests.labels(endpoint, model, str(status)).inc()

    def start(self, endpoint: str, model: str, t0: float) -> RequestObserver:
        return RequestObserver(self, endpoint, model, t0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestObserver:
    """Observes one request that reached the processor; ``finish`` exactly once."""

    __slots__ = ("_done", "_endpoint", "_itl", "_last", "_m", "_model", "_ttft", "first_at", "status", "t0")

    def __init__(self, metrics: FrontendMetrics, endpoint: str, model: str, t0: float) -> None:
        self._m = metrics
        self._endpoint = endpoint
        self._model = model
        self._ttft = metrics.ttft.labels(model)
        self._itl = metrics.itl.labels(model)
        self._last: dict[int, float] = {}
        self._done = False
        self.t0 = t0
        self.first_at: float | None = None
        self.status = 200
        metrics.in_flight.labels(endpoint, model).inc()

    def frame(self, index: int, num_tokens: int, has_text: bool) -> None:
        if num_tokens <= 0 and not has_text:
            return
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self._ttft.observe(now - self.t0)
        else:
            last = self._last.get(index)
            if last is not None:
                k = max(num_tokens, 1)
                gap = (now - last) / k
                for _ in range(k):
                    self._itl.observe(gap)
        self._last[index] = now

    def usage(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int, migrations: int = 0
    ) -> None:
        self._m.prompt_tokens.labels(self._model).inc(prompt_tokens)
        if migrations:
            self._m.migrations.labels(self._model).inc(migrations)
        self._m.completion_tokens.labels(self._model).inc(completion_tokens)
        if cached_tokens:
            self._m.cached_tokens.labels(self._model).inc(cached_tokens)
        uncached = prompt_tokens - cached_tokens
        limit = self._m.remote_prefill_over
        placement = "remote" if limit is not None and uncached > limit else "local"
        self._m.uncached_prompt_tokens.labels(self._model, placement).inc(uncached)

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        m = self._m
        m.in_flight.labels(self._endpoint, self._model).dec()
        m.requests.labels(self._endpoint, self._model, str(self.status)).inc()
        m.duration.labels(self._endpoint, self._model).observe(time.perf_counter() - self.t0)
