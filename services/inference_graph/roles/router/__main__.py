"""Router role: ``python -m inference_graph.roles.router --graph G --role router``.

``IG_METRICS_PORT`` (optional) also serves the router's Prometheus metrics over
HTTP at ``/metrics``; they are always served on the request plane (``metrics``).
"""

from __future__ import annotations

from ...core.spec import Role
from ...runtime.request_plane import EndpointClient, EndpointServer
from ...settings import FIXED
from ..bootstrap import RoleContext, run_role
from .service import DECIDE_ENDPOINT, METRICS_ENDPOINT, RouterService, snapshot_fetcher


def serve_metrics_http(router: RouterService, port: int | None):
    """Serve ``/metrics`` over HTTP on ``port`` (``IG_METRICS_PORT``) if set; returns the server to shut down."""
    if port is None:
        return None
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, registry=router.metrics.registry)
    return server


async def main(ctx: RoleContext) -> None:
    spec = ctx.graph.spec
    workers_client = EndpointClient(ctx.nc, ctx.namespace, Role.DECODE.value, **ctx.endpoint_options())
    router = RouterService(
        spec.engine.block_size,
        spec.routing.kv.weights.as_dict(),
        temperature=spec.routing.kv.temperature,
        fetch_snapshot=snapshot_fetcher(workers_client, spec.engine.block_size),
    )
    metrics_http = serve_metrics_http(router, ctx.settings.metrics_port)
    # Events first (held per worker while its snapshot is in flight), then membership, then every
    # known worker's snapshot, then serve, then register: a processor never reaches a router whose
    # index is not rebuilt yet.
    await router.subscribe(ctx.nc, ctx.namespace)
    workers_watch = await ctx.discovery.watch_instances(ctx.namespace, Role.DECODE.value)
    workers_watch.add_listener(router.on_instance_event)
    await router.rebuild(sorted(workers_watch.instances))
    server = EndpointServer(
        ctx.nc, ctx.namespace, Role.ROUTER.value, ctx.instance_id, liveness=ctx.settings.stream_liveness
    )
    await server.serve(DECIDE_ENDPOINT, router.make_decide_handler())
    await server.serve(METRICS_ENDPOINT, router.make_metrics_handler())
    registration = await ctx.discovery.register(ctx.instance_info(), ctx.config.lease_ttl)
    await ctx.stopping.wait()
    await registration.revoke()
    await server.stop(drain_timeout=FIXED.router_drain_seconds)
    await router.unsubscribe()
    await workers_watch.close()
    await workers_client.close()
    if metrics_http is not None:
        metrics_http.shutdown()


if __name__ == "__main__":
    run_role("KV-aware router: index KV events, pick workers", main)
