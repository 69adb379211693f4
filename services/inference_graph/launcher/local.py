"""Run a graph on this machine: checks, model, infrastructure, role processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.instances import RoleInstance, desired_instances
from ..core.spec import WORKER_ROLES, EngineType, InferenceGraph, Role, SpecError
from ..models import resolve_model_source
from ..settings import FIXED, Env, RuntimeSettings, inherited_environment
from .autoscale import apply_planner_decisions, check_autoscaling_runs_locally, with_frontend_url
from .supervisor import Supervisor

log = logging.getLogger(__name__)

# Callers stop first so nothing new reaches a worker that is draining.
STOP_ORDER = [
    Role.PLANNER.value,  # no decisions while the graph stops
    Role.FRONTEND.value,
    Role.PROCESSOR.value,
    Role.ROUTER.value,
    Role.DECODE.value,
    Role.PREFILL.value,
]


@dataclass(frozen=True)
class LocalOptions:
    host: str = "127.0.0.1"
    ready_timeout: float = 600.0
    stop_grace: float = FIXED.drain_seconds


def check_runs_locally(graph: InferenceGraph) -> None:
    """Reject what the local runtime (CPU vLLM, one machine) cannot run, naming the field."""
    services = graph.spec.services
    for role in WORKER_ROLES:
        service = services.get(role)
        if service is not None and service.tensor_parallel_size > 1:
            raise SpecError(
                f"spec.services.{role.value}.tensorParallelSize",
                f"is {service.tensor_parallel_size}, but the local launcher runs vLLM on CPU, which supports only 1; "
                "tensor parallelism needs GPUs (deploy the graph to Kubernetes)",
            )
    if services.frontend.replicas != 1:
        raise SpecError(
            "spec.services.frontend.replicas", "the local launcher runs exactly one frontend (one port)"
        )
    if services.decode.replicas < 1:
        raise SpecError("spec.services.decode.replicas", "must be at least 1 to serve requests")
    check_autoscaling_runs_locally(graph)


def local_processes(graph: InferenceGraph, instance: RoleInstance):
    """How many processes run ``instance`` here, and the environment of each.

    Simulated workers are cheap: ``engine.mocker.instancesPerProcess`` of them
    share one process (the last takes the remainder), so dozens fit on 2 cores.
    """
    per_process = graph.spec.engine.mocker.instances_per_process
    if (
        instance.role not in WORKER_ROLES
        or graph.spec.engine.type is not EngineType.MOCKER
        or per_process == 1
    ):
        return instance, instance.replicas, None
    processes = math.ceil(instance.replicas / per_process)

    def env_of(index: int) -> dict[str, str]:
        engines = min(per_process, instance.replicas - index * per_process)
        return {Env.IG_ENGINES_PER_PROCESS: str(engines)}

    return instance, processes, env_of


@contextlib.asynccontextmanager
async def infrastructure(
    graph: InferenceGraph, settings: RuntimeSettings | None = None
) -> AsyncIterator[dict[str, str]]:
    """Yield NATS_SERVER/ETCD_ENDPOINTS: from the environment (``settings``) or the spec,
    else embedded servers started here (and stopped on exit)."""
    from ..runtime.embedded import EmbeddedEtcd, EmbeddedNats

    settings = settings or RuntimeSettings.load()
    given = settings.model_fields_set  # set in the environment, not defaults
    infra = graph.spec.infrastructure
    env = {}
    async with contextlib.AsyncExitStack() as stack:
        embedded: list[EmbeddedNats | EmbeddedEtcd] = []
        nats_url = (settings.nats_url if "nats_url" in given else "") or infra.nats.url
        if not nats_url:
            nats = await stack.enter_async_context(EmbeddedNats())
            embedded.append(nats)
            nats_url = nats.url
            print(f"started embedded nats-server (JetStream) at {nats_url}", flush=True)
        env[Env.NATS_SERVER] = nats_url
        etcd = ",".join(settings.etcd_endpoints if "etcd_endpoints" in given else infra.etcd.endpoints or [])
        if not etcd:
            server = await stack.enter_async_context(EmbeddedEtcd())
            embedded.append(server)
            etcd = ",".join(server.endpoints)
            print(f"started embedded etcd at {etcd}", flush=True)
        env[Env.ETCD_ENDPOINTS] = etcd
        for item in embedded:  # a crashed server comes back on its port; the keepers stop first on exit
            keeper = asyncio.create_task(item.keep_running(), name=f"keep {item.name} running")
            stack.push_async_callback(_cancel, keeper)
        yield env


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def wait_until_ready(url: str, timeout: float, failed: asyncio.Future) -> None:
    """Poll the frontend's /health until it answers 200, a role crash-loops, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failed.done():
            failed.result()  # raises the crash-loop error
        if await asyncio.to_thread(_http_ok, url):
            return
        await asyncio.sleep(0.5)  # polling interval of a condition with a deadline
    raise TimeoutError(f"{url} was not ready within {timeout:.0f} s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


async def serve(
    graph: InferenceGraph, options: LocalOptions = LocalOptions(), settings: RuntimeSettings | None = None
) -> None:
    """Run ``graph`` until SIGINT/SIGTERM; stop every process before returning."""
    check_runs_locally(graph)
    settings = settings or RuntimeSettings.load()
    print(f"preparing model {graph.spec.model.source} ...", flush=True)
    # Once here, so replicas don't race to build it.
    resolve_model_source(graph.spec.model.source, settings.model_cache)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with infrastructure(graph, settings) as infra_env:
        with tempfile.TemporaryDirectory(prefix="inference-graph-") as workdir:
            graph_path = Path(workdir) / "graph.yaml"
            graph_path.write_text(yaml.safe_dump(graph.to_manifest(), sort_keys=False))
            base_env = {
                **inherited_environment(),
                Env.IG_NAMESPACE: graph.metadata.name,
                Env.PYTHONUNBUFFERED: "1",
            }
            supervisor = Supervisor(base_env)
            try:
                await _run_until_stopped(graph, str(graph_path), infra_env, supervisor, options, stop)
            finally:
                print("stopping ...", flush=True)
                await supervisor.stop_all(STOP_ORDER, options.stop_grace)
                print("stopped", flush=True)


async def _run_until_stopped(
    graph: InferenceGraph,
    graph_path: str,
    infra_env: dict[str, str],
    supervisor: Supervisor,
    options: LocalOptions,
    stop: asyncio.Event,
) -> None:
    """Start every role, announce readiness, then wait for a stop signal or a crash loop."""
    port = graph.spec.services.frontend.port or FIXED.frontend_port
    base = f"http://{options.host}:{port}"
    instances = [with_frontend_url(i, base) for i in desired_instances(graph, graph_path, infra_env)]
    for instance in instances:
        await supervisor.set_replicas(*local_processes(graph, instance))
    async with contextlib.AsyncExitStack() as stack:
        if graph.spec.autoscaled():
            await stack.enter_async_context(apply_planner_decisions(graph, instances, supervisor, infra_env))
        await _serve_until_stopped(base, supervisor, options, stop, graph)


async def _serve_until_stopped(
    base: str, supervisor: Supervisor, options: LocalOptions, stop: asyncio.Event, graph: InferenceGraph
) -> None:
    stopped = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(wait_until_ready(f"{base}/health", options.ready_timeout, supervisor.failed))
    done, _ = await asyncio.wait({stopped, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        ready.result()
        print(f"ready: {base}/v1 serving {graph.spec.model.name!r} (Ctrl-C to stop)", flush=True)
        crashed = asyncio.ensure_future(supervisor.failed)
        await asyncio.wait((stopped, crashed), return_when=asyncio.FIRST_COMPLETED)
        if crashed.done():
            crashed.result()
    ready.cancel()
    stopped.cancel()
