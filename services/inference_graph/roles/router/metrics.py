"""Prometheus metrics of the KV router, on a registry the service owns (no globals).

Exposed by the router itself: on its request-plane endpoint ``metrics`` (always;
``inference-graph``'s tests and benchmarks read it there) and over HTTP at
``/metrics`` when ``IG_METRICS_PORT`` is set (Kubernetes scrapes that).

- predicted prefix hit rate: ``rate(ig_router_predicted_hit_tokens_total) /
  rate(ig_router_prompt_tokens_total)`` (what the index expected for the chosen
  workers);
- realised prefix hit rate: the frontend's ``ig_frontend_cached_prompt_tokens /
  ig_frontend_prompt_tokens`` (from ``usage.prompt_tokens_details.cached_tokens``,
  as the engines report it); the two side by side show how stale the index is;
- decision latency: ``ig_router_decision_seconds`` (the router's own compute:
  hashing, overlap, scoring, picking; the request-plane round trip is extra);
- index size: ``ig_router_index_blocks`` (distinct router hashes),
  ``ig_router_index_worker_blocks`` (sum over workers), ``ig_router_workers``;
- ingestion: ``rate(ig_router_kv_block_events_total)`` is block events per
  second (a stored or removed block is one event), ``ig_router_kv_batches_total``;
- consistency: ``ig_router_resyncs_total`` (by reason), ``ig_router_snapshots_total``
  (by outcome), ``ig_router_ready`` (1 once the index is rebuilt and ``decide`` answers).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "RouterMetrics"]

_DECISION_BUCKETS = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "ig_router_"
        self.decisions = Counter(p + "decisions", "decide calls answered.", registry=r)
        self.decision_seconds = Histogram(
            p + "decision_seconds", "Time to compute one decision in the router.",
            buckets=_DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of decided requests.", registry=r)
        self.predicted_hit_tokens = Counter(
            p + "predicted_hit_tokens", "Prompt tokens the chosen worker was expected to hold.", registry=r
        )
        self.kv_batches = Counter(p + "kv_batches", "KV event batches received.", registry=r)
        self.kv_block_events = Counter(
            p + "kv_block_events", "Blocks stored or removed, as announced by KV events.", registry=r
        )
        self.resyncs = Counter(p + "resyncs", "Workers resynchronised, by reason.", ["reason"], registry=r)
        self.snapshots = Counter(
            p + "snapshots", "Snapshot requests to workers, by outcome.", ["outcome"], registry=r
        )
        self.ready = Gauge(p + "ready", "1 once the index is rebuilt and decide answers.", registry=r)
        self.index_blocks = Gauge(p + "index_blocks", "Distinct blocks in the index.", registry=r)
        self.worker_blocks = Gauge(p + "index_worker_blocks", "Blocks summed over workers.", registry=r)
        self.workers = Gauge(p + "workers", "Workers in the index.", registry=r)

    def bind_index(
        self, blocks: Callable[[], float], worker_blocks: Callable[[], float], workers: Callable[[], float]
    ) -> None:
        """Index sizes are read when scraped, not kept up to date on the hot path."""
        self.index_blocks.set_function(blocks)
        self.worker_blocks.set_function(worker_blocks)
        self.workers.set_function(workers)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
