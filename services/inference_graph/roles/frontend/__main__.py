"""Frontend role: ``python -m inference_graph.roles.frontend --graph G --role frontend``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import uvicorn
from fastapi import FastAPI

from ...core.spec import Role
from ...processing.build import running_processor
from ...runtime.discovery import InstanceWatch
from ...runtime.request_plane import EndpointClient
from ...settings import FIXED
from ..bootstrap import RoleContext, run_role
from .app import create_app
from .ports import ModelCard
from .remote import DiscoveryModelDirectory, NatsProcessorClient

log = logging.getLogger(__name__)


async def main(ctx: RoleContext) -> None:
    watch = await ctx.discovery.watch_instances(ctx.namespace)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(watch.close)
        if ctx.graph.spec.services.processor.replicas == 0:
            processor, directory = await _embedded_processing(ctx, watch, stack)
        else:
            processors = EndpointClient(ctx.nc, ctx.namespace, Role.PROCESSOR.value, **ctx.endpoint_options())
            stack.push_async_callback(processors.close)
            watch.add_listener(processors.on_instance_event)  # a lost processor fails its streams at once
            processor, directory = NatsProcessorClient(processors), DiscoveryModelDirectory(watch)
        disaggregation = ctx.graph.spec.disaggregation
        remote_over = disaggregation.conditional.max_local_prefill_length if disaggregation.enabled else None
        await _serve_http(ctx, create_app(processor, directory, remote_prefill_over=remote_over))


async def _embedded_processing(ctx: RoleContext, watch: InstanceWatch, stack: contextlib.AsyncExitStack):
    """No processor replicas: tokenize, route and detokenize here, one hop (and one
    process wake-up per token) fewer between HTTP and the workers."""
    spec = ctx.graph.spec
    processor = await stack.enter_async_context(
        running_processor(
            ctx.graph, ctx.nc, ctx.discovery, ctx.namespace, ctx.model_path(), ctx.endpoint_options()
        )
    )
    card = ModelCard(name=spec.model.name, max_model_len=spec.engine.max_model_len, created=int(time.time()))
    log.info("hosting the processor in-process (services.processor.replicas is 0)")
    return processor, DiscoveryModelDirectory(watch, local=card)


async def _serve_http(ctx: RoleContext, app: FastAPI) -> None:
    service = ctx.graph.spec.services.frontend
    config = uvicorn.Config(
        app,
        host="0.0.0.0" if ctx.settings.kubernetes_service_host is not None else "127.0.0.1",
        port=service.port or FIXED.frontend_port,
        loop="none",  # we already run on uvloop
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=round(FIXED.drain_seconds),
    )
    server = _Server(config)
    registration = await ctx.discovery.register(ctx.instance_info(), ctx.config.lease_ttl)
    serving = asyncio.create_task(server.serve())
    await asyncio.wait(
        {serving, asyncio.create_task(ctx.stopping.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    server.should_exit = True  # stop accepting, finish open responses (up to the grace period)
    await serving
    await registration.revoke()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the role bootstrap owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


if __name__ == "__main__":
    run_role("OpenAI-compatible HTTP frontend", main)
