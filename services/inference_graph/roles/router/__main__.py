"""Router role: ``python -m inference_graph.roles.router --graph G --role router``."""

from __future__ import annotations

from ...core.spec import Role
from ...runtime.request_plane import EndpointServer
from ..bootstrap import RoleContext, run_role
from .service import DECIDE_ENDPOINT, RouterService


async def main(ctx: RoleContext) -> None:
    spec = ctx.graph.spec
    router = RouterService(
        spec.engine.block_size, spec.routing.kv.weights, temperature=spec.routing.kv.temperature
    )
    # Events first, then membership, then serve, then register: a processor never reaches a
    # router that is not listening yet.
    await router.subscribe(ctx.nc, ctx.namespace)
    workers_watch = await ctx.discovery.watch_instances(ctx.namespace, Role.DECODE.value)
    workers_watch.add_listener(router.on_instance_event)
    server = EndpointServer(ctx.nc, ctx.namespace, Role.ROUTER.value, ctx.instance_id)
    await server.serve(DECIDE_ENDPOINT, router.make_decide_handler())
    registration = await ctx.discovery.register(ctx.instance_info(), ctx.config.lease_ttl)
    await ctx.stopping.wait()
    await registration.revoke()
    await server.stop(drain_timeout=5)
    await router.unsubscribe()
    await workers_watch.close()


if __name__ == "__main__":
    run_role("KV-aware router: index KV events, pick workers", main)
