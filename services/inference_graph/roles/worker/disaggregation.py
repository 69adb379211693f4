"""What a worker instance adds when ``spec.disaggregation.enabled``, one class per role, so the
instance (``service.WorkerInstance``) stays the same for aggregated, decode and prefill workers.

::

    Disaggregation               both roles: the prefill queue, its depth in the load metrics
    |                            (the planner scales prefill on it), the KV side channel in discovery
    +-- DecodeDisaggregation     ``generate`` goes through ``DisaggregatedDecode`` (conditional
    |                            remote prefill); a watch on the prefill workers says whether any
    |                            serves and where each one's KV side channel is
    +-- PrefillDisaggregation    pulls from the queue until the instance drains

``for_worker`` picks the class from the role, or returns None for an aggregated graph.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors

from ... import wire
from ...core.spec import Role
from ...engines.base import Engine
from ...runtime.discovery import InstanceWatch
from ...runtime.prefill_queue import PrefillQueue, QueueSettings
from ..bootstrap import RoleContext
from .prefill import PrefillWorker
from .remote_prefill import DisaggregatedDecode, LocalPrefixCache

log = logging.getLogger(__name__)


def for_worker(ctx: RoleContext, engine: Engine, instance_id: str) -> Disaggregation | None:
    """The disaggregation side of this worker's role, or None when the graph is aggregated."""
    if not ctx.graph.spec.disaggregation.enabled:
        return None
    if ctx.role is Role.PREFILL:
        return PrefillDisaggregation(ctx, engine, instance_id)
    return DecodeDisaggregation(ctx, engine, instance_id)


class Disaggregation:
    """What decode and prefill workers share: the prefill queue and the KV side channel."""

    def __init__(self, ctx: RoleContext, engine: Engine):
        queue = ctx.graph.spec.disaggregation.queue
        self.ctx = ctx
        self.engine = engine
        self.queue = PrefillQueue(
            ctx.nc,
            ctx.namespace,
            QueueSettings(ack_wait=queue.ack_wait_seconds, max_deliver=queue.max_deliver),
        )
        self._depth = -1

    @property
    def generate_target(self) -> Any:
        """What the ``generate`` endpoint calls."""
        return self.engine

    async def start(self) -> None:
        await self.queue.ensure()

    def record(self, batch: wire.KvEventBatch) -> None:
        """A KV event batch this instance published."""

    def registration_fields(self) -> dict[str, Any]:
        side_channel = self.engine.kv_transfer.side_channel() if self.engine.kv_transfer else None
        if side_channel is None:
            return {}
        return {"kv_side_channel_host": side_channel[0], "kv_side_channel_port": side_channel[1]}

    async def load_fields(self) -> dict[str, Any]:
        try:
            self._depth = await self.queue.depth()
        except (nats.errors.Error, TimeoutError) as exc:  # JetStream unreachable: the last known depth
            log.debug("prefill queue depth unavailable: %r", exc)
        return {"prefill_queue_depth": self._depth}

    async def drain(self) -> None:
        """After the instance left discovery, before its streams finish."""

    async def close(self) -> None:
        """After the instance's streams finished."""
        await self.queue.close()


class DecodeDisaggregation(Disaggregation):
    """A decode worker: conditional remote prefill through the queue, KV pulled from prefill workers."""

    def __init__(self, ctx: RoleContext, engine: Engine, instance_id: str):
        super().__init__(ctx, engine)
        self.prefix = LocalPrefixCache(instance_id, engine.info.block_size)
        self._prefill_watch: InstanceWatch | None = None
        self.decode = DisaggregatedDecode(
            ctx.nc,
            ctx.namespace,
            instance_id,
            engine,
            self.queue,
            ctx.graph.spec.disaggregation,
            prefill_instances=self._serving_prefill_instances,
            prefix=self.prefix,
        )

    def _serving_prefill_instances(self) -> dict[str, wire.InstanceInfo]:
        """Registered prefill workers that still pull (a draining one only finishes what it holds)."""
        if self._prefill_watch is None:
            return {}
        return {i: info for i, info in self._prefill_watch.instances.items() if not info.draining}

    @property
    def generate_target(self) -> Any:
        return self.decode

    async def start(self) -> None:
        await super().start()
        self._prefill_watch = await self.ctx.discovery.watch_instances(self.ctx.namespace, Role.PREFILL.value)
        await self.decode.start()

    def record(self, batch: wire.KvEventBatch) -> None:
        """The decode side's own prefix cache, for the local-or-remote decision."""
        self.prefix.record(batch)

    async def load_fields(self) -> dict[str, Any]:
        c = self.decode.counters
        return {
            **await super().load_fields(),
            "local_prefills": c.local_prefills,
            "remote_prefills": c.remote_prefills,
            "kv_transfer_failures": c.kv_transfer_failures,
        }

    async def close(self) -> None:
        """Stop taking prefill results, stop watching prefill workers, close the queue."""
        await self.decode.stop()
        if self._prefill_watch is not None:
            await self._prefill_watch.close()
        await super().close()


class PrefillDisaggregation(Disaggregation):
    """A prefill worker: pulls prefills from the queue until the instance drains."""

    def __init__(self, ctx: RoleContext, engine: Engine, instance_id: str):
        super().__init__(ctx, engine)
        self.prefill = PrefillWorker(
            engine,
            self.queue,
            instance_id,
            nc=ctx.nc,
            concurrency=ctx.settings.prefill_concurrency,
            receipt_timeout=ctx.graph.spec.disaggregation.queue.remote_timeout_seconds,
        )
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self.prefill.run(self._stopping), name="prefill-pull")

    async def drain(self) -> None:
        """Stop pulling and finish what was pulled."""
        self._stopping.set()
        if self._task is not None:
            await self._task
