"""What the planner sees of one interval: demand, load per role, latencies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    """Measured over the interval that ends at ``now`` (seconds), or sampled at ``now``."""

    now: float
    interval_s: float
    # demand (arrivals in the interval)
    arrivals: int
    remote_prefill_tokens: int  # uncached prompt tokens of arrivals long enough to prefill remotely
    local_prefill_tokens: int  # uncached prompt tokens of the rest (prefilled on decode workers)
    mean_input_tokens: float  # prompt tokens per arrived request
    mean_output_tokens: float  # output tokens per request finished in the interval
    # prefill (sampled at ``now``)
    prefill_replicas: int  # ready, serving
    prefill_queue: int  # requests waiting in the prefill queue
    prefill_in_progress: int  # requests being prefilled by prefill workers
    # decode (sampled at ``now``)
    decode_replicas: int
    decode_kv_usage: float  # mean fraction of KV blocks in use over decode replicas
    decode_running: int
    decode_waiting: int
    # latencies of the requests that got their first token / finished in the interval
    ttft_p90_ms: float | None
    itl_p90_ms: float | None

    @property
    def arrival_rate(self) -> float:
        return self.arrivals / self.interval_s if self.interval_s > 0 else 0.0
