"""Assemble a ``Processor`` from a graph and the runtime's connections.

Used by the processor role and by a frontend that hosts processing itself
(``services.processor.replicas: 0``), so both route and tokenize the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from nats.aio.client import Client as NATS

from ..core.spec import InferenceGraph, Role, RoutingStrategy
from ..runtime.discovery import Discovery
from ..runtime.request_plane import EndpointClient
from .processor import Processor
from .remote import DiscoveryWorkerDirectory, NatsRouterClient, NatsWorkerClient
from .routing import make_strategy
from .tokenization import PromptTokenizer


@contextlib.asynccontextmanager
async def running_processor(
    graph: InferenceGraph,
    nc: NATS,
    discovery: Discovery,
    namespace: str,
    model_path: str,
    endpoint_options: Mapping[str, float] | None = None,
) -> AsyncIterator[Processor]:
    """A processor wired to the graph's decode workers (and router, for ``kv``); closed on exit.

    ``endpoint_options``: ``liveness`` and ``outage_wait`` of its request-plane clients
    (``RoleContext.endpoint_options()``); the settings' defaults when None."""
    options = dict(endpoint_options or {})
    spec = graph.spec
    tokenizer = await asyncio.to_thread(PromptTokenizer.load, spec.model.tokenizer or model_path)
    workers_watch = await discovery.watch_instances(namespace, Role.DECODE.value)
    workers = EndpointClient(nc, namespace, Role.DECODE.value, **options)
    workers_watch.add_listener(workers.on_instance_event)  # a dead worker fails its streams at once
    clients = [workers]
    strategy_args = {}
    if spec.routing.strategy is RoutingStrategy.KV:
        router = EndpointClient(nc, namespace, Role.ROUTER.value, **options)
        clients.append(router)
        strategy_args["decide"] = NatsRouterClient(router)
    processor = Processor(
        tokenizer,
        spec.engine.max_model_len,
        spec.model.name,
        NatsWorkerClient(workers),
        DiscoveryWorkerDirectory(workers_watch, spec.model.name),
        make_strategy(spec.routing.strategy.value, **strategy_args),
        migration_limit=spec.routing.migration_limit,
    )
    try:
        yield processor
    finally:
        for client in clients:
            await client.close()
        await workers_watch.close()
        processor.close()
