"""Worker role: ``python -m inference_graph.roles.worker --graph G --role decode``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from ... import wire
from ...core.spec import InferenceGraph, Role
from ...engines.base import Engine
from ...engines.factory import create_engine
from ...models import resolve_model_source
from ...runtime.event_plane import EventPublisher
from ...runtime.request_plane import EndpointServer
from ..bootstrap import RoleContext, run_role
from .handlers import GENERATE_ENDPOINT, make_generate_handler

log = logging.getLogger(__name__)

LOAD_INTERVAL = float(os.environ.get("IG_LOAD_INTERVAL", "1.0"))


async def relay_kv_events(engine: Engine, publisher: EventPublisher) -> None:
    async for events in engine.kv_events():
        await publisher.publish_kv(events)


async def publish_load(engine: Engine, publisher: EventPublisher, instance_id: str) -> None:
    while True:
        load = engine.load()
        await publisher.publish_load(
            wire.LoadMetrics(
                instance_id=instance_id,
                timestamp=time.time(),
                running=load.running,
                waiting=load.waiting,
                kv_usage=load.kv_usage,
                num_kv_blocks=engine.info.num_kv_blocks,
            )
        )
        await asyncio.sleep(LOAD_INTERVAL)  # a publishing period, not synchronisation


async def start_engine(graph: InferenceGraph, role: Role) -> Engine:
    """Load the model before connecting anywhere (see ``run_role``'s ``before_connect``)."""
    spec = graph.spec
    engine = create_engine(spec.engine, resolve_model_source(spec.model.source), spec.model.name)
    await engine.start()
    return engine


async def main(ctx: RoleContext, engine: Engine) -> None:
    spec = ctx.graph.spec
    server = EndpointServer(ctx.nc, ctx.namespace, ctx.role.value, ctx.instance_id)
    await server.serve(GENERATE_ENDPOINT, make_generate_handler(engine))
    publisher = EventPublisher(ctx.nc, ctx.namespace, ctx.instance_id)
    background = [
        asyncio.create_task(relay_kv_events(engine, publisher), name="kv-events"),
        asyncio.create_task(publish_load(engine, publisher, ctx.instance_id), name="load"),
    ]
    info = ctx.instance_info(
        block_size=engine.info.block_size,
        num_kv_blocks=engine.info.num_kv_blocks,
        max_model_len=engine.info.max_model_len,
        tensor_parallel_size=spec.services.get(ctx.role).tensor_parallel_size,
    )
    # Registered only now, with the model loaded: routing never sees an unready worker.
    registration = await ctx.discovery.register(info, ctx.config.lease_ttl)
    log.info("%s ready: %d KV blocks of %d tokens", ctx.instance_id, info.num_kv_blocks, info.block_size)
    await ctx.stopping.wait()
    # Drain: leave routing first, then finish the streams in flight, then stop the engine.
    await registration.revoke()
    await server.stop(drain_timeout=30)
    for task in background:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*background)
    await engine.shutdown()


if __name__ == "__main__":
    run_role("engine worker (decode or prefill)", main, before_connect=start_engine)
