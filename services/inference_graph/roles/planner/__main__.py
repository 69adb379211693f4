"""Planner role: ``python -m inference_graph.roles.planner --graph G --role planner``.

Every ``spec.planner.intervalSeconds`` it measures the last interval
(``collect.Collector``), asks ``planning.Planner`` for the replicas of the roles
with ``autoscaling.enabled``, and stores the decision in etcd
(``/ig/{namespace}/planner/replicas``). It starts and stops nothing itself: the
one writer of replicas applies the decision (the local launcher, or the operator in
Kubernetes, watches that key).

``IG_FRONTEND_URL`` (required): the frontend's base URL, whose /metrics it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ...core.spec import EngineType, GraphSpec, Role
from ...engines.mocker.timing import TableTiming, TimingModel, make_timing
from ...planning import CapacityModel, Planner, make_policy
from ...runtime.event_plane import subscribe_load
from ...settings import ConfigError, Env
from ..bootstrap import RoleContext, run_role
from .collect import Collector

log = logging.getLogger(__name__)


def timing_profile(spec: GraphSpec) -> TimingModel | None:
    """The step-time model capacity is planned from: the simulated engine's own, or the
    measured profile of a real engine (``spec.planner.profile``)."""
    if spec.engine.type is EngineType.MOCKER:
        return make_timing(spec.engine.mocker)
    if spec.planner.profile:
        return TableTiming.from_file(spec.planner.profile)
    return None  # the load policy needs none; the spec rejects sla with vLLM and no profile


def capacity_model(spec: GraphSpec, kv_blocks: int) -> CapacityModel | None:
    timing = timing_profile(spec)
    if timing is None:
        return None
    transfer = spec.disaggregation.kv_transfer.simulated
    bytes_per_token = transfer.kv_bytes_per_token or 0
    return CapacityModel(
        timing,
        kv_tokens=kv_blocks * spec.engine.block_size,
        max_num_seqs=spec.engine.max_num_seqs,
        # The simulated engine's step budget; a vLLM profile's prefill curve covers vLLM's own.
        max_batched_tokens=spec.engine.mocker.max_num_batched_tokens,
        transfer_s_per_token=bytes_per_token / (transfer.bandwidth_gbps * 1e9),
    )


async def main(ctx: RoleContext) -> None:
    spec, ns = ctx.graph.spec, ctx.namespace
    # Registered at once (the operator's probes look for this key), before waiting for workers.
    registration = await ctx.discovery.register(ctx.instance_info(), ctx.config.lease_ttl)
    decode_watch = await ctx.discovery.watch_instances(ns, Role.DECODE.value)
    prefill_watch = await ctx.discovery.watch_instances(ns, Role.PREFILL.value)
    # KV capacity as the engines report it (vLLM sizes its cache at start); wait for one.
    first = await decode_watch.wait_for(bool, timeout=600)
    kv_blocks = next(iter(first.values())).num_kv_blocks
    planner = Planner.for_graph(spec, make_policy(spec, capacity_model(spec, kv_blocks)))
    current = await _starting_replicas(ctx, planner)
    if not ctx.settings.frontend_url:
        raise ConfigError(Env.IG_FRONTEND_URL, "", "required: the frontend's base URL")
    collector = Collector(ctx.settings.frontend_url.rstrip("/") + "/metrics", spec.planner.interval_seconds)
    subscription = await subscribe_load(ctx.nc, ns, collector.on_load)
    loop = asyncio.get_running_loop()
    log.info(
        "planning %s every %.0f s (%s policy)",
        planner.roles,
        spec.planner.interval_seconds,
        spec.planner.policy,
    )
    try:
        while not await _stopped_within(ctx.stopping, spec.planner.interval_seconds):
            try:
                obs = await collector.observe(
                    loop.time(), _serving(prefill_watch.instances), _serving(decode_watch.instances)
                )
            except OSError as err:  # the frontend is starting, restarting or gone: no decision now
                log.warning(
                    "planner: cannot read %s (%s); skipping this interval", collector.metrics_url, err
                )
                continue
            if obs is None:  # the first scrape: only a baseline
                continue
            decision = planner.decide(obs, current)
            changed = decision.changed(current)
            for role in changed:
                log.info("%s: %s", role, decision.reasons[role])
            if changed:
                current = dict(decision.replicas)
                await ctx.discovery.put_replicas(ns, current)
    finally:
        await registration.revoke()
        await subscription.unsubscribe()
        await decode_watch.close()
        await prefill_watch.close()


async def _starting_replicas(ctx: RoleContext, planner: Planner) -> dict[str, int]:
    """The last decision (a restarted planner continues from it), else each role's spec
    ``replicas`` within its bounds; stored, so the launcher applies the bounds at once."""
    stored = await ctx.discovery.get_replicas(ctx.namespace) or {}
    current = {}
    for role in planner.roles:
        service = ctx.graph.spec.services.get(Role(role))
        assert service is not None
        current[role] = stored.get(role, planner.initial_replicas(role, service.replicas))
    await ctx.discovery.put_replicas(ctx.namespace, current)
    return current


def _serving(instances: dict) -> list[str]:
    """Registered and not draining: a draining replica is already on its way out."""
    return [i for i, info in instances.items() if not info.draining]


async def _stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
    return stopping.is_set()


if __name__ == "__main__":
    run_role("Planner: scale prefill and decode from measured load", main)
