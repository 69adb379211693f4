"""Frontend role: ``python -m inference_graph.roles.frontend --graph G --role frontend``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import uvicorn

from ...runtime.request_plane import EndpointClient
from ..bootstrap import RoleContext, run_role
from .app import create_app
from .remote import DiscoveryModelDirectory, NatsProcessorClient

log = logging.getLogger(__name__)


async def main(ctx: RoleContext) -> None:
    watch = await ctx.discovery.watch_instances(ctx.namespace)
    processors = EndpointClient(ctx.nc, ctx.namespace, "processor")
    watch.add_listener(processors.on_instance_event)  # a lost processor fails its streams at once
    app = create_app(NatsProcessorClient(processors), DiscoveryModelDirectory(watch))
    service = ctx.graph.spec.services.frontend
    config = uvicorn.Config(
        app,
        host="0.0.0.0" if _in_kubernetes() else "127.0.0.1",
        port=service.port or 8000,
        loop="none",  # we already run on uvloop
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
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
    await processors.close()
    await watch.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the role bootstrap owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _in_kubernetes() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


if __name__ == "__main__":
    run_role("OpenAI-compatible HTTP frontend", main)
