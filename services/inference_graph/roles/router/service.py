"""The router's state and its request-plane endpoint ``decide``.

``RouterService`` owns a ``KvIndex`` fed by every worker's ``KvEventBatch`` on
the event plane, the latest ``LoadMetrics`` per worker, and a ``KvPolicy``
that scores candidates. Discovery "removed" events drop a worker from the
index at once.

Resync (interim): a gap, an unknown parent or a malformed batch makes
``KvIndex.apply`` return ``ResyncNeeded``. Until workers answer snapshot
requests (or a JetStream stream can be replayed), the router drops that
worker's entries and re-arms it: the batch that tripped is retried against the
empty state (a late-started router then learns every block chain that starts
at the root), and if it still does not apply it is skipped, so the next batch
(``seq + 1``) is accepted. The index never claims a block it cannot vouch for
(an underestimate, never a phantom); what was dropped is learnt again as the
worker stores new chains. ``resyncs`` counts these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from ... import wire
from ...core.kv_index import KvIndex, ResyncNeeded
from ...core.kv_scoring import Decision, InflightPrefill, KvPolicy
from ...runtime import event_plane
from ...runtime.errors import RequestError

log = logging.getLogger(__name__)

DECIDE_ENDPOINT = "decide"


class RouterService:
    """KV index + load view + policy; ``decide`` is pure apart from the clock."""

    def __init__(
        self,
        block_size: int,
        weights: Mapping[str, float | Mapping[str, Any]] | None = None,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = KvIndex(block_size)
        self.load: dict[str, wire.LoadMetrics] = {}
        self.inflight = InflightPrefill()
        self.policy = KvPolicy(
            self.index, weights, temperature=temperature, seed=seed, inflight=self.inflight
        )
        self._clock = clock
        self.resyncs = 0
        self.decisions = 0
        self._subs: list[Subscription] = []

    # ------------------------------------------------------------ inputs

    def on_kv_batch(self, batch: wire.KvEventBatch) -> None:
        need = self.index.apply(batch)
        if need is not None:
            self._resync(need, batch)

    def _resync(self, need: ResyncNeeded, batch: wire.KvEventBatch) -> None:
        """Interim resync: drop the worker's entries, retry this batch on the empty state, else skip it."""
        self.resyncs += 1
        log.warning(
            "KV index resync of %s (%s: expected seq %d, got %d): dropping its entries",
            need.worker,
            need.reason.value,
            need.expected_seq,
            need.got_seq,
        )
        self.index.load_snapshot(need.worker, [], batch.seq - 1)
        if self.index.apply(batch) is not None:
            self.index.load_snapshot(need.worker, [], batch.seq)

    def on_load(self, metrics: wire.LoadMetrics) -> None:
        self.load[metrics.instance_id] = metrics
        self.inflight.observe_load(metrics.instance_id, metrics.timestamp)

    def on_instance_event(self, event: str, info: wire.InstanceInfo) -> None:
        """Discovery listener for decode workers: a worker whose lease is gone leaves the index."""
        if event == "removed":
            self.forget_worker(info.instance_id)

    def forget_worker(self, worker: str) -> None:
        self.index.remove_worker(worker)
        self.load.pop(worker, None)
        self.inflight.forget(worker)

    # ------------------------------------------------------------ decisions

    def decide(self, token_ids: Sequence[int], workers: Sequence[str]) -> Decision:
        self.decisions += 1
        return self.policy.decide(token_ids, workers, self.load, self._clock())

    def make_decide_handler(self):
        """``RouteRequest`` bytes in, one ``RouteDecision`` out."""
        decode = wire.decoder(wire.RouteRequest).decode
        encode = wire.encoder.encode

        async def handle(payload: bytes) -> AsyncIterator[bytes]:
            request = decode(payload)
            if not request.workers:
                raise RequestError(wire.ErrorInfo(400, "invalid_request_error", "no candidate workers"))
            decision = self.decide(request.token_ids, request.workers)
            yield encode(
                wire.RouteDecision(decision.worker, decision.expected_hit_tokens, decision.overlap_blocks)
            )

        return handle

    # ------------------------------------------------------------ wiring

    async def subscribe(self, nc: NATS, namespace: str) -> None:
        """Listen to every worker's KV events and load in ``namespace``."""
        self._subs = [
            await event_plane.subscribe_kv(nc, namespace, self.on_kv_batch),
            await event_plane.subscribe_load(nc, namespace, self.on_load),
        ]

    async def unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be closing
                log.debug("unsubscribe failed", exc_info=True)
