"""The one pure function from a graph to the role instances it needs.

The local launcher runs each ``RoleInstance`` as ``replicas`` processes; the
operator renders each into a Deployment. Neither decides what a role runs:
that is decided here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import Env
from .spec import WORKER_ROLES, EngineType, InferenceGraph, Role

ROLE_MODULES = {
    Role.FRONTEND: "inference_graph.roles.frontend",
    Role.PROCESSOR: "inference_graph.roles.processor",
    Role.ROUTER: "inference_graph.roles.router",
    Role.DECODE: "inference_graph.roles.worker",
    Role.PREFILL: "inference_graph.roles.worker",
    Role.PLANNER: "inference_graph.roles.planner",
}


@dataclass(frozen=True)
class RoleInstance:
    """What one role of a graph runs: a Python module with arguments, and how many."""

    role: Role
    replicas: int
    module: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0
    port: int | None = None

    def argv(self, python: str = "python") -> list[str]:
        return [python, "-m", self.module, *self.args]


def desired_instances(
    graph: InferenceGraph,
    graph_path: str,
    infrastructure_env: dict[str, str],
) -> list[RoleInstance]:
    """Role instances for ``graph``.

    ``graph_path`` is where the role processes will find the graph manifest
    (a temp file locally, a ConfigMap mount in Kubernetes). ``infrastructure_env``
    holds the runtime's defaults for NATS_SERVER/ETCD_ENDPOINTS; endpoints named
    in the spec override them, and each role's own ``env`` overrides both.
    """
    spec = graph.spec
    base_env = dict(infrastructure_env)
    if spec.infrastructure.nats.url:
        base_env[Env.NATS_SERVER] = spec.infrastructure.nats.url
    if spec.infrastructure.etcd.endpoints:
        base_env[Env.ETCD_ENDPOINTS] = ",".join(spec.infrastructure.etcd.endpoints)

    uses_gpus = spec.engine.type is not EngineType.MOCKER  # simulated workers need no accelerator
    instances = []
    for role in Role:
        service = spec.services.get(role)
        if service is None or role not in ROLE_MODULES:
            continue
        gpus = service.tensor_parallel_size if role in WORKER_ROLES and uses_gpus else 0
        instances.append(
            RoleInstance(
                role=role,
                replicas=service.replicas,
                module=ROLE_MODULES[role],
                args=("--graph", graph_path, "--role", role.value),
                env={**base_env, **service.env},
                gpus=gpus,
                port=service.port if role is Role.FRONTEND else None,
            )
        )
    if spec.autoscaled():  # one planner per graph; it needs the frontend's URL (IG_FRONTEND_URL)
        instances.append(
            RoleInstance(
                role=Role.PLANNER,
                replicas=1,
                module=ROLE_MODULES[Role.PLANNER],
                args=("--graph", graph_path, "--role", Role.PLANNER.value),
                env=dict(base_env),
            )
        )
    return instances
