"""Processor role: ``python -m inference_graph.roles.processor --graph G --role processor``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ... import wire
from ...core.spec import Role, RoutingStrategy
from ...runtime.errors import RequestError
from ...runtime.request_plane import EndpointClient, EndpointServer
from ..bootstrap import RoleContext, run_role
from .errors import ProcessingError
from .processor import Processor
from .remote import DiscoveryWorkerDirectory, NatsRouterClient, NatsWorkerClient
from .routing import make_strategy
from .tokenization import PromptTokenizer

PROCESS_ENDPOINT = "process"


def make_handler(processor: Processor):
    decode = wire.decoder(wire.ProcessRequest).decode
    encode = wire.encoder.encode

    async def handle(payload: bytes) -> AsyncIterator[bytes]:
        request = decode(payload)
        try:
            async with contextlib.aclosing(processor.process(request)) as outputs:
                async for output in outputs:
                    yield encode(output)
        except ProcessingError as exc:
            raise RequestError(exc.info) from None

    return handle


async def main(ctx: RoleContext) -> None:
    spec = ctx.graph.spec
    tokenizer = await asyncio.to_thread(PromptTokenizer.load, spec.model.tokenizer or ctx.model_path())
    workers_watch = await ctx.discovery.watch_instances(ctx.namespace, Role.DECODE.value)
    workers = EndpointClient(ctx.nc, ctx.namespace, Role.DECODE.value)
    workers_watch.add_listener(workers.on_instance_event)  # a dead worker fails its streams at once
    router: EndpointClient | None = None
    strategy_args = {}
    if spec.routing.strategy is RoutingStrategy.KV:
        router = EndpointClient(ctx.nc, ctx.namespace, Role.ROUTER.value)
        strategy_args["decide"] = NatsRouterClient(router)
    processor = Processor(
        tokenizer,
        spec.engine.max_model_len,
        spec.model.name,
        NatsWorkerClient(workers),
        DiscoveryWorkerDirectory(workers_watch, spec.model.name),
        make_strategy(spec.routing.strategy.value, **strategy_args),
    )
    server = EndpointServer(ctx.nc, ctx.namespace, Role.PROCESSOR.value, ctx.instance_id)
    await server.serve(PROCESS_ENDPOINT, make_handler(processor))
    info = ctx.instance_info(max_model_len=spec.engine.max_model_len)
    registration = await ctx.discovery.register(info, ctx.config.lease_ttl, model=spec.model.name)
    await ctx.stopping.wait()
    await registration.revoke()  # frontends stop sending here
    await server.stop(drain_timeout=30)  # finish the streams in flight
    await workers.close()
    if router is not None:
        await router.close()
    await workers_watch.close()
    processor.close()


if __name__ == "__main__":
    run_role("processor: tokenize, route, detokenize", main)
