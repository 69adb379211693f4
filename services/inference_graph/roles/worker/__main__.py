"""Worker role: ``python -m inference_graph.roles.worker --graph G --role decode``.

``IG_ENGINES_PER_PROCESS`` (set by the local launcher for simulated workers)
makes one process host several engines, each its own instance.
"""

from __future__ import annotations

import asyncio

from ...core.spec import InferenceGraph, Role
from ...engines.base import Engine
from ...engines.factory import create_engine
from ...models import resolve_model_source
from ...settings import RuntimeSettings
from ..bootstrap import RoleContext, run_role
from .service import WorkerInstance


async def start_engines(graph: InferenceGraph, role: Role, settings: RuntimeSettings) -> list[Engine]:
    """Load the model(s) before connecting anywhere (see ``run_role``'s ``before_connect``)."""
    spec = graph.spec
    model_path = resolve_model_source(spec.model.source, settings.model_cache)
    kv_transfer = spec.disaggregation.kv_transfer if spec.disaggregation.enabled else None
    engines = [
        create_engine(
            spec.engine,
            model_path,
            spec.model.name,
            kv_transfer,
            kv_producer=role == Role.PREFILL,
            settings=settings,
        )
        for _ in range(settings.engines_per_process)
    ]
    await asyncio.gather(*(engine.start() for engine in engines))
    return engines


async def main(ctx: RoleContext, engines: list[Engine]) -> None:
    ids = [ctx.instance_id] if len(engines) == 1 else [f"{ctx.instance_id}-{i}" for i in range(len(engines))]
    instances = [
        WorkerInstance(ctx, engine, instance_id) for engine, instance_id in zip(engines, ids, strict=True)
    ]
    await asyncio.gather(*(instance.start() for instance in instances))
    await ctx.stopping.wait()
    await asyncio.gather(*(instance.drain() for instance in instances))


if __name__ == "__main__":
    run_role("engine worker (decode or prefill)", main, before_connect=start_engines)
