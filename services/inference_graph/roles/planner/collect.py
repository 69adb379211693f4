"""What the planner measures each interval, from the graph's own telemetry.

- demand and latencies: the frontend's Prometheus counters and histograms
  (requests, uncached prompt tokens by prefill placement, completion tokens,
  TTFT and ITL), as differences between two scrapes;
- load: the workers' ``LoadMetrics`` on the event plane (running, waiting, KV
  usage; decode workers also report the prefill queue's depth);
- replicas: the worker instances registered in discovery (ready and serving).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from ... import wire
from ...planning import Observation

P = "ig_frontend_"
LOAD_STALE_S = 10.0  # a worker's load report older than this is ignored (it left, or is stuck)


@dataclass
class FrontendSample:
    """Cumulative values of one /metrics scrape (summed over models and labels)."""

    requests: float = 0.0
    remote_tokens: float = 0.0
    local_tokens: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    ttft_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    itl_buckets: dict[float, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> FrontendSample:
        sample = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                sample._add(s.name, s.labels, s.value)
        return sample

    def _add(self, name: str, labels: dict[str, str], value: float) -> None:
        if name == P + "requests_total" and labels.get("status") == "200":
            self.requests += value
        elif name == P + "uncached_prompt_tokens_total":
            if labels.get("prefill") == "remote":
                self.remote_tokens += value
            else:
                self.local_tokens += value
        elif name == P + "prompt_tokens_total":
            self.prompt_tokens += value
        elif name == P + "completion_tokens_total":
            self.completion_tokens += value
        elif name == P + "time_to_first_token_seconds_bucket":
            le = float(labels["le"])
            self.ttft_buckets[le] = self.ttft_buckets.get(le, 0.0) + value
        elif name == P + "inter_token_latency_seconds_bucket":
            le = float(labels["le"])
            self.itl_buckets[le] = self.itl_buckets.get(le, 0.0) + value


def quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile (ms) of what a histogram observed between two scrapes: the upper
    bound of the bucket it falls in (conservative), None when nothing was observed."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= target:
            if bound == float("inf"):  # beyond the last finite bucket: report that bound
                finite = [b for b in bounds if b != float("inf")]
                return 1000.0 * finite[-1] if finite else None
            return 1000.0 * bound
    return None


def scrape(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class Collector:
    """Builds one ``Observation`` per call from the last interval's telemetry."""

    def __init__(self, metrics_url: str, interval_s: float):
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self._previous: FrontendSample | None = None
        self._load: dict[str, wire.LoadMetrics] = {}  # instance id -> latest report
        self._received: dict[str, float] = {}  # instance id -> when it arrived (monotonic)

    def on_load(self, metrics: wire.LoadMetrics) -> None:
        self._load[metrics.instance_id] = metrics
        self._received[metrics.instance_id] = time.monotonic()

    async def observe(
        self, now: float, prefill_ids: Iterable[str], decode_ids: Iterable[str]
    ) -> Observation | None:
        """``prefill_ids``/``decode_ids``: the instances serving now. None for the first call (a
        baseline: counters are cumulative). Raises OSError when the frontend cannot be read."""
        prefill_ids, decode_ids = list(prefill_ids), list(decode_ids)
        sample = FrontendSample.parse(await asyncio.to_thread(scrape, self.metrics_url))
        before, self._previous = self._previous, sample
        if before is None:
            return None
        prefill = self._fresh(prefill_ids)
        decode = self._fresh(decode_ids)
        # The frontend counts a request, its tokens and its usage when it ends: "arrivals" are the
        # requests that ended in the interval, a rate that trails the true arrivals by a request's length.
        arrivals = sample.requests - before.requests
        finished_output = sample.completion_tokens - before.completion_tokens
        return Observation(
            now=now,
            interval_s=self.interval_s,
            arrivals=round(arrivals),
            remote_prefill_tokens=round(sample.remote_tokens - before.remote_tokens),
            local_prefill_tokens=round(sample.local_tokens - before.local_tokens),
            mean_input_tokens=(sample.prompt_tokens - before.prompt_tokens) / arrivals if arrivals else 0.0,
            mean_output_tokens=finished_output / arrivals if arrivals else 0.0,
            prefill_replicas=len(prefill_ids),
            prefill_queue=max(0, max((m.prefill_queue_depth for m in decode), default=0)),
            prefill_in_progress=sum(m.running + m.waiting for m in prefill),
            decode_replicas=len(decode_ids),
            decode_kv_usage=sum(m.kv_usage for m in decode) / len(decode) if decode else 0.0,
            decode_running=sum(m.running for m in decode),
            decode_waiting=sum(m.waiting for m in decode),
            ttft_p90_ms=quantile_ms(before.ttft_buckets, sample.ttft_buckets, 0.9),
            itl_p90_ms=quantile_ms(before.itl_buckets, sample.itl_buckets, 0.9),
        )

    def _fresh(self, instance_ids: Iterable[str]) -> list[wire.LoadMetrics]:
        horizon = time.monotonic() - LOAD_STALE_S
        return [
            self._load[i] for i in instance_ids if i in self._load and self._received.get(i, 0.0) >= horizon
        ]
