"""An InferenceGraph as Kubernetes objects: pure functions, no API calls.

:func:`render` returns every child of a graph (a ConfigMap with the graph, one
Deployment per role, a Service for the frontend), each with an ownerReference
to the graph so that deleting the graph deletes them. What each role runs comes
from ``desired_instances`` — the same function the local launcher uses; this
module only decides how a role instance becomes a pod.

Choices (see docs/kubernetes.md):

- Env: the operator's NATS/etcd defaults < the spec's ``infrastructure`` < the
  role's own ``env`` (``desired_instances`` merges these); the downward-API pod
  identity and ``IG_NAMESPACE`` are added unless the user set them.
- GPUs: ``limits[<gpu resource>] = tensorParallelSize`` for worker roles (GPU
  requests must equal limits). An empty resource name turns GPU requests off,
  for CPU clusters and the CPU runtime image.
- Command: the role's argv goes into ``args`` so the image ENTRYPOINT (tini) stays PID 1.
- Probes: the frontend answers HTTP ``/health`` (a model has a ready worker) and
  ``/live``. The processor and workers have no listener; their probe asks etcd
  whether this pod's instance is registered under its lease
  (``python -m inference_graph_operator.probe``) — registration happens once the
  engine is loaded, and the lease lapses when the process stops keeping it alive,
  so it is both the readiness and the liveness signal. A startup probe with a long
  budget covers model loading, so liveness can stay strict.
- Termination: roles drain for up to 30 s after SIGTERM; the grace period is that
  plus a 5 s preStop pause (time for the Service and routers to stop sending new
  work) plus 10 s margin.
- RDMA (per role, ``services.<role>.rdma.enabled``): the device plugin's resource
  (request = limit), IPC_LOCK (pinning registered memory) and SYS_RESOURCE (raising
  the memlock limit), a memory-backed /dev/shm with a size limit, the Multus
  networks annotation, and UCX env. UCX_TLS lists RDMA (rc, with ud for its
  connection bootstrap), shared memory and loopback, and no tcp: a pod whose RDMA
  device is missing fails at connect time instead of moving KV over TCP at a tenth of
  the speed; cuda_copy/cuda_ipc are added when the KV buffers live on GPUs.
  UCX_RNDV_SCHEME=get_zcopy with UCX_RNDV_THRESH=0 makes every transfer a zero-copy
  RDMA read, which is how NIXL pulls KV blocks. ``ucxEnv`` overrides these; the
  role's ``env`` overrides everything.
- Rolling updates: each pod template carries a hash of the parts of the spec its
  role reads (its own service entry without replicas and rollout, and the shared
  sections), so a spec change rolls only the roles it affects and scaling rolls
  nothing. By default a Deployment rolls with maxUnavailable 0 and maxSurge 1: an old
  pod goes only once its replacement is Ready, so ready pods never drop below replicas
  (a GPU role needs room for one more instance's GPUs; without it the new pod stays
  Pending and the rollout waits, old pods serving). ``services.<role>.rollout`` chooses
  other values (``maxSurge: 0, maxUnavailable: 1`` for a cluster with no spare GPUs).
- Disruptions: a role with 2 or more replicas gets a PodDisruptionBudget with
  maxUnavailable 1, so a drain or any other eviction takes one of its pods at a time and
  leaves replicas - 1 >= 1 ready. A role with 1 replica gets none: a budget there could
  only block drains until someone deletes it (the PDB is removed when replicas drop
  below 2). Unhealthy pods may always be evicted (``unhealthyPodEvictionPolicy``), so a
  crash-looping pod never holds a drain.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from inference_graph.core.instances import RoleInstance, desired_instances
from inference_graph.core.spec import (
    API_VERSION,
    KIND,
    InferenceGraph,
    KvBufferDevice,
    RdmaSpec,
    Role,
    RolloutSpec,
    ServiceSpec,
)
from inference_graph.models.sources import PVC_MOUNT_ROOT
from inference_graph.settings import FIXED, Env, OperatorSettings

from .crd import SCALER_KIND

GRAPH_DIR = "/etc/inference-graph"
GRAPH_FILE = "graph.yaml"
GRAPH_PATH = f"{GRAPH_DIR}/{GRAPH_FILE}"
MODEL_CACHE_DIR = "/var/cache/inference-graph"
TERMINATION_GRACE_SECONDS = (
    round(FIXED.drain_seconds) + FIXED.prestop_seconds + FIXED.termination_margin_seconds
)

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SPEC_HASH_ANNOTATION = "inferencegraph.dev/spec-hash"
APP_NAME = "inference-graph"

PDB_MIN_REPLICAS = 2  # a role with fewer replicas gets no PodDisruptionBudget
MULTUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
RDMA_CAPABILITIES = ("IPC_LOCK", "SYS_RESOURCE")
UCX_TRANSPORTS = "rc,ud,sm,self"
UCX_GPU_TRANSPORTS = "cuda_copy,cuda_ipc"

WORKER_ROLES = (Role.DECODE, Role.PREFILL)


_SETTINGS = OperatorSettings()  # the defaults, not the environment


@dataclass(frozen=True)
class OperatorDefaults:
    """The operator's settings that are not in the graph (from the Helm chart)."""

    image: str = _SETTINGS.runtime_image
    image_pull_policy: str = _SETTINGS.runtime_image_pull_policy
    nats_url: str = _SETTINGS.default_nats_server
    etcd_endpoints: tuple[str, ...] = _SETTINGS.default_etcd_endpoints
    gpu_resource: str = _SETTINGS.gpu_resource  # "" = request no GPUs (CPU clusters)
    service_type: str = "ClusterIP"
    part_of: str = _SETTINGS.part_of
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> OperatorDefaults:
        """The settings the chart passes to the operator (charts/dynamo/templates/operator.yaml)."""
        return cls(
            image=settings.runtime_image,
            image_pull_policy=settings.runtime_image_pull_policy,
            nats_url=settings.default_nats_server,
            etcd_endpoints=settings.default_etcd_endpoints,
            gpu_resource=settings.gpu_resource,
            part_of=settings.part_of,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorDefaults:
        return cls.from_settings(OperatorSettings.load(environ))

    def infrastructure_env(self) -> dict[str, str]:
        env = {}
        if self.nats_url:
            env[Env.NATS_SERVER] = self.nats_url
        if self.etcd_endpoints:
            env[Env.ETCD_ENDPOINTS] = ",".join(self.etcd_endpoints)
        return env


@dataclass(frozen=True)
class Owner:
    """The InferenceGraph object the children belong to."""

    name: str
    uid: str
    namespace: str = "default"


def child_name(graph_name: str, role: Role | str) -> str:
    return f"{graph_name}-{Role(role).value}"


def configmap_name(graph_name: str) -> str:
    return f"{graph_name}-graph"


def labels(graph: InferenceGraph, defaults: OperatorDefaults, role: Role | None = None) -> dict[str, str]:
    out = {
        **defaults.extra_labels,
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: graph.metadata.name,
        PART_OF_LABEL: defaults.part_of,
        MANAGED_BY_LABEL: "inference-graph-operator",
    }
    if role is not None:
        out[COMPONENT_LABEL] = role.value
    return out


def selector(graph: InferenceGraph, role: Role) -> dict[str, str]:
    """Immutable in a Deployment: only labels that never change."""
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: graph.metadata.name, COMPONENT_LABEL: role.value}


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def graph_manifest(graph: InferenceGraph, namespace: str) -> dict[str, Any]:
    """The graph as the role processes read it: spec with defaults, no server metadata."""
    manifest = graph.to_manifest()
    manifest["metadata"] = {"name": graph.metadata.name, "namespace": namespace}
    return manifest


def role_spec_hash(graph: InferenceGraph, role: Role) -> str:
    """Hash of what ``role``'s pods read: scaling (replicas) and other roles' entries excluded."""
    spec = graph.to_manifest()["spec"]
    services = spec.pop("services", {})
    own = dict(services.get(role.value) or {})
    own.pop("replicas", None)
    own.pop("rollout", None)  # how pods are replaced is no reason to replace them
    spec["ownService"] = own
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def frontend_endpoint(graph: InferenceGraph, namespace: str) -> str:
    port = graph.spec.services.frontend.port or FIXED.frontend_port
    return f"http://{child_name(graph.metadata.name, Role.FRONTEND)}.{namespace}.svc:{port}"


def render(
    graph: InferenceGraph,
    owner: Owner,
    defaults: OperatorDefaults | None = None,
    replicas: Mapping[Role, int] | None = None,
) -> list[dict]:
    """Every child object of ``graph``: the ConfigMap, then Deployments in role order, then the
    Service, then PodDisruptionBudgets in role order.

    ``replicas`` overrides the spec's count per role: the operator decides replica counts
    (``reconcile.decide_replicas``), so that one writer owns them.
    """
    defaults = defaults or OperatorDefaults()
    instances = desired_instances(graph, GRAPH_PATH, defaults.infrastructure_env())
    if replicas:
        instances = [replace(i, replicas=replicas.get(i.role, i.replicas)) for i in instances]
    objects = [render_configmap(graph, owner, defaults)]
    objects += [render_deployment(graph, inst, owner, defaults) for inst in instances]
    if any(inst.role is Role.FRONTEND for inst in instances):
        objects.append(render_frontend_service(graph, owner, defaults))
    objects += [
        render_disruption_budget(graph, inst.role, owner, defaults)
        for inst in instances
        if inst.replicas >= PDB_MIN_REPLICAS
    ]
    return objects


def render_disruption_budget(
    graph: InferenceGraph, role: Role, owner: Owner, defaults: OperatorDefaults
) -> dict:
    """At most one of the role's pods evicted at a time (a drain waits for its replacement to be
    Ready); only for roles with :data:`PDB_MIN_REPLICAS` or more (module docstring)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(child_name(graph.metadata.name, role), graph, owner, defaults, role),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(graph, role)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_scaler(
    graph: InferenceGraph, role: Role, owner: Owner, defaults: OperatorDefaults, replicas: int | None
) -> dict[str, Any]:
    """The role's InferenceGraphScaler (``crd.scaler_custom_resource_definition``): its scale
    subresource is the role's scale. ``replicas`` None leaves ``spec.replicas`` out of what the
    operator applies, to whoever set it last (``reconcile.scale_decisions``)."""
    spec: dict[str, Any] = {"graph": graph.metadata.name, "role": role.value}
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": API_VERSION,
        "kind": SCALER_KIND,
        "metadata": _metadata(child_name(graph.metadata.name, role), graph, owner, defaults, role),
        "spec": spec,
    }


def scaler_status(graph: InferenceGraph, role: Role, deployment: Mapping[str, Any] | None) -> dict[str, Any]:
    """A scaler's status from its role's Deployment: the pods there are and the selector of those
    pods (an HPA reads both through the scale subresource)."""
    status = (deployment or {}).get("status") or {}
    return {
        "replicas": status.get("replicas", 0),
        "readyReplicas": status.get("readyReplicas", 0),
        "selector": ",".join(f"{k}={v}" for k, v in sorted(selector(graph, role).items())),
    }


def _metadata(name: str, graph: InferenceGraph, owner: Owner, defaults: OperatorDefaults, role=None) -> dict:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(graph, defaults, role),
        "ownerReferences": [owner_reference(owner)],
    }


def render_configmap(graph: InferenceGraph, owner: Owner, defaults: OperatorDefaults) -> dict:
    # libyaml's emitter where PyYAML has it: the pure-Python one is ~90% of a render's CPU
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(graph_manifest(graph, owner.namespace), Dumper=dumper, sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(configmap_name(graph.metadata.name), graph, owner, defaults),
        "data": {GRAPH_FILE: text},
    }


def render_frontend_service(graph: InferenceGraph, owner: Owner, defaults: OperatorDefaults) -> dict:
    port = graph.spec.services.frontend.port or FIXED.frontend_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            child_name(graph.metadata.name, Role.FRONTEND), graph, owner, defaults, Role.FRONTEND
        ),
        "spec": {
            "type": defaults.service_type,
            "selector": selector(graph, Role.FRONTEND),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _env(graph: InferenceGraph, inst: RoleInstance) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    downward = {
        Env.POD_NAME: "metadata.name",
        Env.POD_NAMESPACE: "metadata.namespace",
        Env.POD_IP: "status.podIP",
        Env.NODE_NAME: "spec.nodeName",
    }
    for name, path in downward.items():
        if name not in inst.env:
            env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    injected = {
        Env.IG_NAMESPACE: graph.metadata.name,
        Env.IG_MODEL_CACHE: MODEL_CACHE_DIR,
        Env.PYTHONUNBUFFERED: "1",
    }
    if inst.role is Role.PLANNER:  # it reads the frontend's metrics through the frontend Service
        port = graph.spec.services.frontend.port or FIXED.frontend_port
        injected[Env.IG_FRONTEND_URL] = f"http://{child_name(graph.metadata.name, Role.FRONTEND)}:{port}"
    rdma = _rdma(graph, inst.role)
    if rdma:
        injected.update(rdma_env(rdma, graph.spec.disaggregation.kv_transfer.buffer_device))
    merged = {**injected, **inst.env}  # user env (already merged over infrastructure) wins
    env += [{"name": k, "value": v} for k, v in sorted(merged.items())]
    return env


def _resources(graph: InferenceGraph, inst: RoleInstance, defaults: OperatorDefaults) -> dict[str, Any]:
    service = graph.spec.services.get(inst.role)
    user = service.resources if service else {}
    resources = {k: dict(v) for k, v in user.items() if isinstance(v, dict)}
    if inst.gpus and defaults.gpu_resource:
        gpus = str(inst.gpus)
        resources.setdefault("limits", {})[defaults.gpu_resource] = gpus
        if defaults.gpu_resource in resources.get("requests", {}):
            resources["requests"][defaults.gpu_resource] = gpus  # extended resources: requests == limits
    rdma = _rdma(graph, inst.role)
    if rdma:
        count = str(rdma.count)
        resources.setdefault("limits", {})[rdma.resource] = count
        if rdma.resource in resources.get("requests", {}):
            resources["requests"][rdma.resource] = count
    return resources


def _rdma(graph: InferenceGraph, role: Role) -> RdmaSpec | None:
    service = graph.spec.services.get(role)
    return service.rdma if service and service.rdma.enabled else None


def rdma_env(rdma: RdmaSpec, buffer_device: KvBufferDevice) -> dict[str, str]:
    """UCX settings of the RDMA preset (reasons in the module docstring); ``ucxEnv`` wins."""
    transports = UCX_TRANSPORTS
    if buffer_device is KvBufferDevice.CUDA:
        transports += "," + UCX_GPU_TRANSPORTS
    env = {Env.UCX_TLS: transports, Env.UCX_RNDV_SCHEME: "get_zcopy", Env.UCX_RNDV_THRESH: "0"}
    if rdma.roce:
        env[Env.UCX_IB_ADDR_TYPE] = "eth"  # RoCE ports have Ethernet (GID) addresses, not IB LIDs
    return {**env, **rdma.ucx_env}


def _probes(inst: RoleInstance) -> dict[str, Any]:
    if inst.role is Role.FRONTEND:
        return {
            "startupProbe": {
                "httpGet": {"path": "/live", "port": "http"},
                "periodSeconds": 2,
                "failureThreshold": 60,
            },
            "readinessProbe": {
                "httpGet": {"path": "/health", "port": "http"},
                "periodSeconds": 5,
                "failureThreshold": 2,
            },
            "livenessProbe": {
                "httpGet": {"path": "/live", "port": "http"},
                "periodSeconds": 10,
                "timeoutSeconds": 5,
                "failureThreshold": 3,
            },
        }
    command = ["python", "-m", "inference_graph_operator.probe", "--role", inst.role.value]
    loading = 60 if inst.role in WORKER_ROLES else 12  # x 10 s: model load / tokenizer load budget

    def check(period: int, failures: int) -> dict[str, Any]:
        return {
            "exec": {"command": list(command)},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        }

    return {
        "startupProbe": check(10, loading),
        "readinessProbe": check(10, 2),
        "livenessProbe": check(20, 3),
    }


def _model_volume(graph: InferenceGraph) -> tuple[dict, dict] | None:
    """A ``pvc://CLAIM/PATH`` model source: the claim, mounted read-only at /models/CLAIM."""
    source = graph.spec.model.source
    if not source.startswith("pvc://"):
        return None
    claim = source.removeprefix("pvc://").split("/", 1)[0]
    volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "model", "mountPath": str(PVC_MOUNT_ROOT / claim), "readOnly": True}
    return volume, mount


def _rolling_update(service: ServiceSpec | None) -> dict[str, int]:
    rollout = service.rollout if service else RolloutSpec()
    return {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable}


def render_deployment(
    graph: InferenceGraph, inst: RoleInstance, owner: Owner, defaults: OperatorDefaults
) -> dict[str, Any]:
    role = inst.role
    service = graph.spec.services.get(role)
    name = child_name(graph.metadata.name, role)
    volumes: list[dict[str, Any]] = [
        {"name": "graph", "configMap": {"name": configmap_name(graph.metadata.name)}},
        {"name": "model-cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "graph", "mountPath": GRAPH_DIR, "readOnly": True},
        {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    rdma = _rdma(graph, role)
    if role in WORKER_ROLES or rdma:  # NCCL, vLLM's shared memory between TP ranks, UCX staging
        shm: dict[str, Any] = {"medium": "Memory"}
        if rdma:
            shm["sizeLimit"] = rdma.shm_size
        volumes.append({"name": "dshm", "emptyDir": shm})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    model_volume = _model_volume(graph)
    if model_volume and role is not Role.FRONTEND:
        volumes.append(model_volume[0])
        mounts.append(model_volume[1])

    container: dict[str, Any] = {
        "name": role.value,
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        # args, not command: the image ENTRYPOINT (tini) stays PID 1, reaping the engine's child
        # processes and forwarding SIGTERM; an image without an ENTRYPOINT runs args as is.
        "args": inst.argv("python"),
        "env": _env(graph, inst),
        "volumeMounts": mounts,
        **_probes(inst),
        "lifecycle": {"preStop": {"sleep": {"seconds": FIXED.prestop_seconds}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if rdma:  # added after the drop: memory registration pins pages beyond the default memlock limit
        container["securityContext"]["capabilities"]["add"] = list(RDMA_CAPABILITIES)
    if role is Role.FRONTEND:
        container["ports"] = [
            {"name": "http", "containerPort": inst.port or FIXED.frontend_port, "protocol": "TCP"}
        ]
    resources = _resources(graph, inst, defaults)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,  # no *_SERVICE_HOST env clutter from every Service in the namespace
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if service and service.node_selector:
        pod_spec["nodeSelector"] = dict(service.node_selector)
    if service and service.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in service.tolerations]
    if service and service.affinity:
        pod_spec["affinity"] = copy.deepcopy(service.affinity)

    pod_labels = {**labels(graph, defaults, role), **selector(graph, role)}
    pod_annotations = {SPEC_HASH_ANNOTATION: role_spec_hash(graph, role)}
    if rdma and rdma.networks:
        pod_annotations[MULTUS_ANNOTATION] = ",".join(rdma.networks)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, graph, owner, defaults, role),
        "spec": {
            "replicas": inst.replicas,
            "selector": {"matchLabels": selector(graph, role)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": _rolling_update(service)},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": pod_annotations,
                },
                "spec": pod_spec,
            },
        },
    }
