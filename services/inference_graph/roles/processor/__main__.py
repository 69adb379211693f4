"""Processor role: ``python -m inference_graph.roles.processor --graph G --role processor``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from ... import wire
from ...core.spec import Role
from ...processing import Processor
from ...processing.build import running_processor
from ...runtime.request_plane import EndpointServer
from ...settings import FIXED
from ..bootstrap import RoleContext, run_role

PROCESS_ENDPOINT = "process"


def make_handler(processor: Processor):
    decode = wire.decoder(wire.ProcessRequest).decode
    encode = wire.encoder.encode

    async def handle(payload: bytes) -> AsyncGenerator[bytes, None]:
        request = decode(payload)
        # A ServingError (a bad request, no worker, a worker's error) reaches the frontend as it is.
        async with contextlib.aclosing(processor.process(request)) as outputs:
            async for output in outputs:
                yield encode(output)

    return handle


async def main(ctx: RoleContext) -> None:
    spec = ctx.graph.spec
    async with running_processor(
        ctx.graph, ctx.nc, ctx.discovery, ctx.namespace, ctx.model_path(), ctx.endpoint_options()
    ) as processor:
        server = EndpointServer(
            ctx.nc,
            ctx.namespace,
            Role.PROCESSOR.value,
            ctx.instance_id,
            liveness=ctx.settings.stream_liveness,
        )
        await server.serve(PROCESS_ENDPOINT, make_handler(processor))
        info = ctx.instance_info(max_model_len=spec.engine.max_model_len)
        registration = await ctx.discovery.register(info, ctx.config.lease_ttl, model=spec.model.name)
        await ctx.stopping.wait()
        await registration.revoke()  # frontends stop sending here
        await server.stop(drain_timeout=FIXED.drain_seconds)  # finish the streams in flight


if __name__ == "__main__":
    run_role("processor: tokenize, route, detokenize", main)
