"""The router's state and its request-plane endpoints ``decide`` and ``metrics``.

``RouterService`` owns a ``KvIndex`` fed by every worker's ``KvEventBatch`` on
the event plane, the latest ``LoadMetrics`` per worker, and a ``KvPolicy``
that scores candidates. Discovery "removed" events drop a worker from the
index at once.

Rebuild and resync by snapshot: ``rebuild(workers)`` (at start) asks every
known worker for its snapshot (``runtime.event_plane.KV_SNAPSHOT_ENDPOINT``: its
blocks and the ``seq`` of the last batch they include) and ``decide`` answers
only once that is done (before, it answers "not ready", which the processor's
``kv`` strategy turns into a visible fallback). Later, a gap, a reorder, an
unknown parent or a malformed batch (``KvIndex.apply`` returns ``ResyncNeeded``)
starts the same snapshot request for that worker. While a worker's snapshot is
in flight its batches are held back; the snapshot is loaded, then the held
batches are applied on top (those it already covers are duplicates by ``seq``).

When a worker cannot answer (an older worker, a timeout), the router falls back
to dropping that worker's entries and re-arming it: the batch that tripped is
retried against the empty state, and if it still does not apply it is skipped,
so the next batch is accepted. The index never claims a block it cannot vouch
for (an underestimate, never a phantom). ``resyncs`` counts resyncs,
``snapshots`` the snapshots loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from ... import wire
from ...core.kv_index import KvIndex, ResyncNeeded
from ...core.kv_scoring import Decision, InflightPrefill, KvPolicy
from ...errors import invalid_request, service_unavailable
from ...runtime import event_plane
from ...runtime.request_plane import EndpointClient
from .metrics import RouterMetrics

log = logging.getLogger(__name__)

DECIDE_ENDPOINT = "decide"
METRICS_ENDPOINT = "metrics"
NOT_READY_STATUS = 503

SNAPSHOT_TIMEOUT = 5.0  # seconds for one worker's whole snapshot

# worker id -> (seq, engine hash -> router hash); raises when the worker cannot answer.
SnapshotFetch = Callable[[str], Awaitable[tuple[int, dict[int, int]]]]


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
        fetch_snapshot: SnapshotFetch | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.index = KvIndex(block_size)
        self.load: dict[str, wire.LoadMetrics] = {}
        self.inflight = InflightPrefill()
        self.policy = KvPolicy(
            self.index, weights, temperature=temperature, seed=seed, inflight=self.inflight
        )
        self._clock = clock
        self._fetch_snapshot = fetch_snapshot
        self.metrics = metrics or RouterMetrics()
        self.metrics.bind_index(
            lambda: len(self.index),
            lambda: sum(self.index.stats().per_worker.values()),
            lambda: len(self.index.workers()),
        )
        self.resyncs = 0
        self.snapshots = 0
        self.decisions = 0
        # Without snapshots there is nothing to rebuild from: ready at once.
        self.ready = fetch_snapshot is None
        self.metrics.ready.set(int(self.ready))
        self._syncing: dict[str, list[wire.KvEventBatch]] = {}  # worker -> batches held during its snapshot
        self._sync_tasks: dict[str, asyncio.Task] = {}
        self._subs: list[Subscription] = []

    # ------------------------------------------------------------ inputs

    def on_kv_batch(self, batch: wire.KvEventBatch) -> None:
        self.metrics.kv_batches.inc()
        self.metrics.kv_block_events.inc(_block_events(batch))
        held = self._syncing.get(batch.instance_id)
        if held is not None:
            held.append(batch)
            return
        need = self.index.apply(batch)
        if need is not None:
            self._resync(need, batch)

    def _resync(self, need: ResyncNeeded, batch: wire.KvEventBatch) -> None:
        self.resyncs += 1
        self.metrics.resyncs.labels(need.reason.value).inc()
        log.warning(
            "KV index resync of %s (%s: expected seq %d, got %d)",
            need.worker,
            need.reason.value,
            need.expected_seq,
            need.got_seq,
        )
        if self._fetch_snapshot is None or not self._start_sync(need.worker, [batch]):
            self._drop_and_rearm(need.worker, batch)

    def _drop_and_rearm(self, worker: str, batch: wire.KvEventBatch) -> None:
        """No snapshot: drop the worker's entries, retry ``batch`` on the empty state, else skip it."""
        log.warning("dropping the KV index entries of %s (no snapshot)", worker)
        self.index.load_snapshot(worker, [], batch.seq - 1)
        if self.index.apply(batch) is not None:
            self.index.load_snapshot(worker, [], batch.seq)

    def _start_sync(self, worker: str, held: list[wire.KvEventBatch]) -> bool:
        """Hold ``worker``'s batches and fetch its snapshot in a task; False outside an event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._syncing[worker] = held
        self._sync_tasks[worker] = loop.create_task(self._sync(worker), name=f"kv-snapshot-{worker}")
        return True

    async def _sync(self, worker: str) -> None:
        assert self._fetch_snapshot is not None
        try:
            seq, blocks = await self._fetch_snapshot(worker)
        except Exception as exc:  # any failure means "no snapshot": fall back
            log.warning("no KV snapshot from %s (%s)", worker, str(exc) or type(exc).__name__)
            seq, blocks = None, {}
            self.metrics.snapshots.labels("failed").inc()
        if self._sync_tasks.get(worker) is not asyncio.current_task():
            return  # the worker left (or a newer sync replaced this one) meanwhile
        del self._sync_tasks[worker]
        held = sorted(self._syncing.pop(worker), key=lambda b: b.seq)
        if seq is not None:
            self.index.load_snapshot(worker, blocks, seq)
            self.snapshots += 1
            self.metrics.snapshots.labels("loaded").inc()
        elif held:
            self._drop_and_rearm(worker, held.pop(0))
        for i, batch in enumerate(held):
            need = self.index.apply(batch)
            if need is not None:  # lost batches again: one more snapshot, holding the rest
                self.resyncs += 1
                self.metrics.resyncs.labels(need.reason.value).inc()
                if not self._start_sync(worker, held[i:]):
                    self._drop_and_rearm(worker, batch)
                return

    async def rebuild(self, workers: Sequence[str]) -> None:
        """Load every worker's snapshot (concurrently); ``decide`` answers from then on."""
        for worker in workers if self._fetch_snapshot is not None else ():
            if worker not in self._syncing:
                self._start_sync(worker, [])
        tasks = [self._sync_tasks[w] for w in workers if w in self._sync_tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("KV index rebuilt from %d workers: %d blocks", len(workers), len(self.index))

    def on_load(self, metrics: wire.LoadMetrics) -> None:
        self.load[metrics.instance_id] = metrics
        self.inflight.observe_load(metrics.instance_id, metrics.timestamp)

    def on_instance_event(self, event: str, info: wire.InstanceInfo) -> None:
        """Discovery listener for decode workers: a worker whose lease is gone leaves the index."""
        if event == "removed":
            self.forget_worker(info.instance_id)

    def forget_worker(self, worker: str) -> None:
        self._syncing.pop(worker, None)
        task = self._sync_tasks.pop(worker, None)
        if task is not None:
            task.cancel()
        self.index.remove_worker(worker)
        self.load.pop(worker, None)
        self.inflight.forget(worker)

    # ------------------------------------------------------------ decisions

    def decide(self, token_ids: Sequence[int], workers: Sequence[str]) -> Decision:
        t0 = time.perf_counter()
        decision = self.policy.decide(token_ids, workers, self.load, self._clock())
        m = self.metrics
        m.decision_seconds.observe(time.perf_counter() - t0)
        m.decisions.inc()
        m.prompt_tokens.inc(len(token_ids))
        m.predicted_hit_tokens.inc(decision.expected_hit_tokens)
        self.decisions += 1
        return decision

    def make_decide_handler(self):
        """``RouteRequest`` bytes in, one ``RouteDecision`` out."""
        decode = wire.decoder(wire.RouteRequest).decode
        encode = wire.encoder.encode

        async def handle(payload: bytes) -> AsyncGenerator[bytes, None]:
            request = decode(payload)
            if not request.workers:
                raise invalid_request("no candidate workers")
            if not self.ready:
                raise service_unavailable("router is rebuilding its KV index", status=NOT_READY_STATUS)
            decision = self.decide(request.token_ids, request.workers)
            yield encode(
                wire.RouteDecision(decision.worker, decision.expected_hit_tokens, decision.overlap_blocks)
            )

        return handle

    def make_metrics_handler(self):
        """Prometheus text exposition, one frame (the request body is ignored)."""

        async def handle(payload: bytes) -> AsyncGenerator[bytes, None]:
            yield self.metrics.exposition()

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


def _block_events(batch: wire.KvEventBatch) -> int:
    """Blocks stored or removed in ``batch`` (a clear counts as one event)."""
    n = 0
    for event in batch.events:
        n += 1 if isinstance(event, wire.AllBlocksCleared) else len(event.block_hashes)
    return n


def snapshot_fetcher(workers: EndpointClient, block_size: int) -> SnapshotFetch:
    """Ask one decode instance for its ``kv_snapshot`` (directed call) and join the chunks."""
    decode = wire.decoder(event_plane.KvSnapshotChunk).decode

    async def fetch(worker: str) -> tuple[int, dict[int, int]]:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT):
            frames = workers.stream(
                event_plane.KV_SNAPSHOT_ENDPOINT, b"", worker, ack_timeout=SNAPSHOT_TIMEOUT
            )
            async with contextlib.aclosing(frames):
                chunks = [decode(frame) async for frame in frames]
        seq, blocks = event_plane.join_chunks(chunks)
        if chunks[0].block_size != block_size:  # the index ignores such blocks in events too
            return seq, {}
        return seq, blocks

    return fetch
