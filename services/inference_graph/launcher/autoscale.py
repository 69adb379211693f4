"""Autoscaling on one machine: run the planner role, apply its decisions as processes.

The launcher is the one writer of local replicas, as the operator is in
Kubernetes: the planner stores ``{role: replicas}`` in etcd, this watches it and
starts or stops worker processes. Stopping is the graceful drain every worker
does on SIGTERM (it marks itself draining so nothing new is routed to it, a
decode worker finishes its streams, a prefill worker stops pulling and finishes
what it holds, then it leaves discovery), so nothing is lost. A decision is
applied role by role; a scale-down waits for the leaving worker's drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator

from ..core.instances import RoleInstance
from ..core.spec import EngineType, InferenceGraph, Role, SpecError
from ..runtime.discovery import Discovery, PrefixWatch
from ..settings import Env
from .supervisor import Supervisor


def check_autoscaling_runs_locally(graph: InferenceGraph) -> None:
    """Local replicas are processes: several simulated engines per process cannot scale one by one."""
    spec = graph.spec
    if (
        spec.autoscaled()
        and spec.engine.type is EngineType.MOCKER
        and spec.engine.mocker.instances_per_process > 1
    ):
        raise SpecError(
            "spec.engine.mocker.instancesPerProcess",
            "must be 1 when a role autoscales locally (the launcher scales processes)",
        )


def with_frontend_url(instance: RoleInstance, frontend_url: str) -> RoleInstance:
    """The planner reads the frontend's metrics; locally the frontend is on this machine."""
    if instance.role is not Role.PLANNER:
        return instance
    return dataclasses.replace(instance, env={**instance.env, Env.IG_FRONTEND_URL: frontend_url})


@contextlib.asynccontextmanager
async def apply_planner_decisions(
    graph: InferenceGraph, instances: list[RoleInstance], supervisor: Supervisor, infra_env: dict[str, str]
) -> AsyncIterator[None]:
    """While inside: every decision of the planner sets the replicas of its roles."""
    by_role = {inst.role.value: inst for inst in instances}
    discovery = await Discovery.connect(infra_env[Env.ETCD_ENDPOINTS].split(","))
    watch = await discovery.watch_replicas(graph.metadata.name)
    task = asyncio.create_task(_apply_forever(watch, by_role, supervisor), name="apply-planner-decisions")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watch.close()
        await discovery.close()


def _decision_changed(applied: dict[str, int], snapshot: dict[str, dict[str, int]]) -> bool:
    return snapshot.get("replicas", applied) != applied


async def _apply_forever(
    watch: PrefixWatch[str, dict[str, int]], by_role: dict[str, RoleInstance], supervisor: Supervisor
) -> None:
    applied: dict[str, int] = {}
    while True:
        snapshot = await watch.wait_for(functools.partial(_decision_changed, applied), timeout=None)
        decision = snapshot["replicas"]
        for role, count in decision.items():
            if role in by_role and applied.get(role) != count:
                print(f"planner: {role} -> {count} replicas", flush=True)  # the launcher's console
                await supervisor.set_replicas(by_role[role], count)
        applied = dict(decision)
