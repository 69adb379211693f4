"""What a worker instance adds when ``spec.disaggregation.enabled``: one object, so the instance
(``service.WorkerInstance``) stays the same for aggregated, decode and prefill workers.

- decode role: ``generate`` goes through ``DisaggregatedDecode`` (conditional remote
  prefill); a watch on the prefill workers tells it whether any is registered and
  where each one's KV side channel is;
- prefill role: ``PrefillWorker`` pulls from the queue until the instance drains;
- both: the queue's depth and the decode counters in the load metrics (the
  planner scales prefill on the depth), the engine's KV side channel in discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ... import wire
from ...core.spec import Role
from ...engines.base import Engine
from ...runtime.prefill_queue import PrefillQueue, QueueSettings
from ..bootstrap import RoleContext
from .prefill import PrefillWorker
from .remote_prefill import DisaggregatedDecode, LocalPrefixCache

log = logging.getLogger(__name__)


class Disaggregation:
    def __init__(self, ctx: RoleContext, engine: Engine, instance_id: str):
        spec = ctx.graph.spec.disaggregation
        self.ctx = ctx
        self.engine = engine
        self.queue = PrefillQueue(
            ctx.nc,
            ctx.namespace,
            QueueSettings(ack_wait=spec.queue.ack_wait_seconds, max_deliver=spec.queue.max_deliver),
        )
        self.decode: DisaggregatedDecode | None = None
        self.prefill: PrefillWorker | None = None
        self._prefill_watch = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._depth = -1
        if ctx.role is Role.PREFILL:
            self.prefill = PrefillWorker(
                engine,
                self.queue,
                instance_id,
                nc=ctx.nc,
                receipt_timeout=spec.queue.remote_timeout_seconds,
                concurrency=ctx.settings.prefill_concurrency,
            )
        else:
            self.prefix = LocalPrefixCache(instance_id, engine.info.block_size)
            self.decode = DisaggregatedDecode(
                ctx.nc,
                ctx.namespace,
                instance_id,
                engine,
                self.queue,
                spec,
                prefill_instances=self._serving_prefill_instances,
                prefix=self.prefix,
            )

    def _serving_prefill_instances(self) -> dict[str, wire.InstanceInfo]:
        """Registered prefill workers that still pull (a draining one only finishes what it holds)."""
        if self._prefill_watch is None:
            return {}
        return {i: info for i, info in self._prefill_watch.instances.items() if not info.draining}

    @classmethod
    def create(cls, ctx: RoleContext, engine: Engine, instance_id: str) -> Disaggregation | None:
        return cls(ctx, engine, instance_id) if ctx.graph.spec.disaggregation.enabled else None

    @property
    def generate_target(self) -> Any:
        """What the ``generate`` endpoint calls: the engine, or the decode side's ``generate``."""
        return self.decode or self.engine

    async def start(self) -> None:
        await self.queue.ensure()
        if self.decode is not None:
            self._prefill_watch = await self.ctx.discovery.watch_instances(
                self.ctx.namespace, Role.PREFILL.value
            )
            await self.decode.start()
        else:
            self._task = asyncio.create_task(self.prefill.run(self._stopping), name="prefill-pull")

    def record(self, batch: wire.KvEventBatch) -> None:
        """A KV event batch this instance published (the decode side's own prefix cache)."""
        if self.decode is not None:
            self.prefix.record(batch)

    def registration_fields(self) -> dict[str, Any]:
        side_channel = self.engine.kv_transfer.side_channel() if self.engine.kv_transfer else None
        if side_channel is None:
            return {}
        return {"kv_side_channel_host": side_channel[0], "kv_side_channel_port": side_channel[1]}

    async def load_fields(self) -> dict[str, Any]:
        with contextlib.suppress(Exception):  # the last known depth while JetStream is unreachable
            self._depth = await self.queue.depth()
        fields: dict[str, Any] = {"prefill_queue_depth": self._depth}
        if self.decode is not None:
            c = self.decode.counters
            fields.update(
                local_prefills=c.local_prefills,
                remote_prefills=c.remote_prefills,
                kv_transfer_failures=c.kv_transfer_failures,
            )
        return fields

    async def drain(self) -> None:
        """Prefill: stop pulling and finish what was pulled (after leaving discovery)."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        """After the instance's streams finished: stop taking prefill results, close the queue."""
        if self.decode is not None:
            await self.decode.stop()
        if self._prefill_watch is not None:
            await self._prefill_watch.close()
        await self.queue.close()
