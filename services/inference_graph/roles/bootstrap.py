"""What every role process does the same way: arguments, configuration, the
NATS and etcd connections, signals, and the event loop.

The settings (``RuntimeSettings``) are read from the environment once, in
``run_role``, and reach the role as ``ctx.settings``.

A role's ``__main__`` is ``run_role(main)`` where ``main(ctx)`` serves until
``ctx.stopping`` is set (SIGTERM/SIGINT) and then drains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import uvloop
from nats.aio.client import Client as NATS

from .. import wire
from ..core.spec import InferenceGraph, Role, load_graph
from ..models import resolve_model_source
from ..runtime.config import RuntimeConfig
from ..runtime.discovery import Discovery
from ..settings import RuntimeSettings

log = logging.getLogger(__name__)


@dataclass
class RoleContext:
    graph: InferenceGraph
    role: Role
    config: RuntimeConfig
    instance_id: str
    nc: NATS
    discovery: Discovery
    stopping: asyncio.Event
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)  # defaults, not the environment

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def instance_info(self, **fields) -> wire.InstanceInfo:
        return wire.InstanceInfo(
            instance_id=self.instance_id,
            namespace=self.namespace,
            component=self.role.value,
            model=self.graph.spec.model.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=time.time(),
            **fields,
        )

    def endpoint_options(self) -> dict[str, float]:
        """The request plane's times from the settings: ``EndpointServer(..., **options)``
        takes ``liveness``; ``EndpointClient`` takes ``liveness`` and ``outage_wait``."""
        return {"liveness": self.settings.stream_liveness, "outage_wait": self.settings.outage_wait}

    def model_path(self) -> str:
        return resolve_model_source(self.graph.spec.model.source, self.settings.model_cache)


def make_instance_id(role: Role, pod_name: str | None = None) -> str:
    """Readable and unique: the pod name where Kubernetes gives one, plus a random suffix."""
    return f"{pod_name or role.value}-{uuid.uuid4().hex[:8]}"


def parse_args(description: str) -> tuple[InferenceGraph, Role]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--graph", required=True, help="InferenceGraph manifest")
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    args = parser.parse_args()
    return load_graph(args.graph), Role(args.role)


@contextlib.asynccontextmanager
async def role_context(
    graph: InferenceGraph, role: Role, settings: RuntimeSettings
) -> AsyncIterator[RoleContext]:
    # Without IG_NAMESPACE, a graph's roles share the graph's name as namespace.
    config = RuntimeConfig.from_settings(settings, namespace=graph.metadata.name)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # Reconnect attempts every 0.5 s (nats-py's default is 2 s): after a NATS restart, requests are
    # served again as soon as every role has reconnected and subscribed again.
    nc = await nats.connect(
        config.nats_url,
        name=f"{role.value}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        **_nats_callbacks(),
    )
    discovery = await Discovery.connect(config.etcd_endpoints)
    try:
        instance_id = make_instance_id(role, settings.pod_name)
        yield RoleContext(graph, role, config, instance_id, nc, discovery, stopping, settings)
    finally:
        await discovery.close()
        await nc.drain()


def _nats_callbacks() -> dict[str, Callable[..., Awaitable[None]]]:
    """One log line per NATS event, instead of nats-py's traceback on every reconnect attempt."""
    down = False

    async def on_error(exc: Exception) -> None:
        if not down:  # while reconnecting, every refused attempt would log again
            log.warning("NATS: %s", str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        nonlocal down
        down = True
        log.warning("NATS connection lost; reconnecting (requests wait up to IG_OUTAGE_WAIT for it)")

    async def on_reconnected() -> None:
        nonlocal down
        down = False
        log.warning("NATS reconnected; subscriptions restored")

    return {"error_cb": on_error, "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected}


def run_role(
    description: str,
    main: Callable[..., Awaitable[None]],
    *,
    before_connect: Callable[[InferenceGraph, Role, RuntimeSettings], Awaitable[Any]] | None = None,
) -> None:
    """Entry point of a role process: ``main(ctx)`` serves until ``ctx.stopping``.

    ``before_connect(graph, role, settings)``, if given, runs before any NATS or etcd
    connection exists and its result becomes ``main``'s second argument. The
    worker starts its engine there: vLLM forks its engine core, and a forked
    child would inherit our sockets and hold them open after this process dies,
    so NATS would keep delivering requests to a dead worker.
    """
    settings = RuntimeSettings.load()  # the one read of the environment
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    graph, role = parse_args(description)

    async def _main() -> None:
        prepared = await before_connect(graph, role, settings) if before_connect else None
        async with role_context(graph, role, settings) as ctx:
            log.info("starting %s as %s in namespace %s", role.value, ctx.instance_id, ctx.namespace)
            await (main(ctx, prepared) if before_connect else main(ctx))

    uvloop.run(_main())
