"""One served engine: its endpoint, its events, its registration, its drain.

A worker process usually hosts one ``WorkerInstance``; with the simulated
engine it can host many (``engine.mocker.instancesPerProcess``), each a
separate instance in discovery with its own subjects, so a 2-core machine can
run a graph of dozens of workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec

from ... import wire
from ...engines.base import Engine
from ...runtime.discovery import Registration
from ...runtime.event_plane import KV_SNAPSHOT_ENDPOINT, EventPublisher
from ...runtime.request_plane import EndpointServer
from ...settings import FIXED
from ..bootstrap import RoleContext
from . import disaggregation
from .handlers import GENERATE_ENDPOINT, make_generate_handler
from .kv_snapshot import KvMirror

log = logging.getLogger(__name__)


class WorkerInstance:
    def __init__(self, ctx: RoleContext, engine: Engine, instance_id: str):
        self.ctx = ctx
        self.engine = engine
        self.instance_id = instance_id
        self._server = EndpointServer(
            ctx.nc, ctx.namespace, ctx.role.value, instance_id, liveness=ctx.settings.stream_liveness
        )
        # What this instance announced, for a router that asks for a snapshot (restart, lost batches).
        self._kv_mirror = KvMirror(instance_id, engine.info.block_size)
        self._publisher = EventPublisher(ctx.nc, ctx.namespace, instance_id, on_batch=self._kv_mirror.record)
        self._background: list[asyncio.Task] = []
        self._registration: Registration | None = None
        self._registered: wire.InstanceInfo | None = None
        self._disagg = disaggregation.for_worker(ctx, engine, instance_id)  # None unless disaggregated

    async def start(self) -> None:
        """Serve, publish events, then register: routing never sees an instance that cannot serve."""
        if self._disagg is not None:
            await self._disagg.start()
        target = self._disagg.generate_target if self._disagg else self.engine
        await self._server.serve(GENERATE_ENDPOINT, make_generate_handler(target))
        await self._server.serve(KV_SNAPSHOT_ENDPOINT, self._kv_mirror.make_handler())
        self._background = [
            asyncio.create_task(self._relay_kv_events(), name=f"kv-events-{self.instance_id}"),
            asyncio.create_task(self._publish_load(), name=f"load-{self.instance_id}"),
        ]
        info = self.engine.info
        service = self.ctx.graph.spec.services.get(self.ctx.role)
        registered = msgspec.structs.replace(
            self.ctx.instance_info(),
            instance_id=self.instance_id,
            block_size=info.block_size,
            num_kv_blocks=info.num_kv_blocks,
            max_model_len=info.max_model_len,
            tensor_parallel_size=service.tensor_parallel_size if service else 1,
            **(self._disagg.registration_fields() if self._disagg else {}),
        )
        self._registered = registered
        self._registration = await self.ctx.discovery.register(registered, self.ctx.config.lease_ttl)
        log.info("%s ready: %d KV blocks of %d tokens", self.instance_id, info.num_kv_blocks, info.block_size)

    async def drain(self) -> None:
        """Leave routing first (marked draining, lease kept: callers do not take it for lost),
        then finish the streams in flight, then leave discovery, then stop the engine."""
        if self._registration is not None:
            assert self._registered is not None, "set with the registration"
            await self.ctx.discovery.mark_draining(self._registration, self._registered)
        if self._disagg is not None:  # a prefill worker stops pulling and finishes what it pulled
            await self._disagg.drain()
        await self._server.stop(drain_timeout=FIXED.drain_seconds)
        if self._registration is not None:
            await self._registration.revoke()
        if self._disagg is not None:
            await self._disagg.close()
        for task in self._background:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._background)
        await self.engine.shutdown()

    async def _relay_kv_events(self) -> None:
        async for events in self.engine.kv_events():
            batch = await self._publisher.publish_kv(events)
            if self._disagg is not None:
                self._disagg.record(batch)

    async def _publish_load(self) -> None:
        while True:
            load = self.engine.load()
            await self._publisher.publish_load(
                wire.LoadMetrics(
                    instance_id=self.instance_id,
                    timestamp=time.time(),
                    running=load.running,
                    waiting=load.waiting,
                    kv_usage=load.kv_usage,
                    num_kv_blocks=self.engine.info.num_kv_blocks,
                    **(await self._disagg.load_fields() if self._disagg else {}),
                )
            )
            await asyncio.sleep(self.ctx.settings.load_interval)  # a publishing period, not synchronisation
