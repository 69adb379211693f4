"""The InferenceGraph resource as one typed model, shared by the launcher and the operator.

The same manifest works with ``kubectl apply -f`` and ``inference-graph serve``.
Field names are camelCase in YAML (Kubernetes convention) and snake_case in
Python. Unknown fields are rejected so a typo is an error that names the field,
not a silently ignored setting.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..environment import FIXED

API_GROUP = "inferencegraph.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "InferenceGraph"


class SpecError(ValueError):
    """An InferenceGraph that cannot be used; ``field`` is the dotted path at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _cel(*rules: tuple[str, str, str]) -> dict[str, Any]:
    """``x-kubernetes-validations`` of a model's CRD schema node (``inference_graph_operator.crd`` keeps
    them): ``(rule, message, fieldPath)`` each, the CEL twin of a model validator below, so the API server
    rejects at apply time, naming the field, what parsing would reject. Rules guard every optional level
    with ``has()``: the CRD defaults leaves, not absent objects."""
    return {
        "x-kubernetes-validations": [
            {"rule": rule, "message": message, "fieldPath": path} for rule, message, path in rules
        ]
    }


class Role(enum.StrEnum):
    FRONTEND = "frontend"
    PROCESSOR = "processor"
    ROUTER = "router"
    DECODE = "decode"
    PREFILL = "prefill"
    PLANNER = "planner"  # not a service of the spec: run where roles autoscale (local launcher today)


WORKER_ROLES = (Role.DECODE, Role.PREFILL)


class ModelSpec(_Model):
    name: str = Field(min_length=1, description="Model name clients send in requests.")
    source: str = Field(
        min_length=1,
        description="Where the weights come from: builtin://NAME (shipped with the project), "
        "a local path, hf://ORG/NAME (pulled by the engine where a hub is reachable) "
        "or pvc://CLAIM/PATH (Kubernetes).",
    )
    tokenizer: str | None = Field(default=None, description="Tokenizer source; defaults to the model's.")


class EngineType(enum.StrEnum):
    VLLM = "vllm"
    MOCKER = "mocker"  # the simulated engine


class TimingModel(enum.StrEnum):
    POLYNOMIAL = "polynomial"
    TABLE = "table"
    INSTANT = "instant"


class MockerSpec(_Model):
    """Settings of the simulated engine (``engine.type: mocker``)."""

    timing: TimingModel = Field(
        default=TimingModel.POLYNOMIAL,
        description="polynomial: prefill/decode step times from fitted curves; table: from a measured "
        "profile; instant: no simulated time (measures the serving path's own overhead).",
    )
    timing_table: str | None = Field(default=None, description="Measured profile (JSON) for timing: table.")
    speedup: float = Field(default=1.0, gt=0, description="Simulated time runs this many times faster.")
    num_kv_blocks: int = Field(default=16384, ge=1, description="KV blocks per simulated engine.")
    max_num_batched_tokens: int = Field(
        default=8192, ge=1, description="Most tokens one engine step processes."
    )
    instances_per_process: int = Field(
        default=1,
        ge=1,
        description="Simulated workers hosted by one worker process (each registers on its own).",
    )
    seed: int = Field(default=0, description="Seed of the simulated output tokens.")
    eos_probability: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Chance per generated token of ending at EOS (mean output length 1/p); 0 runs to maxTokens.",
    )


class EngineSpec(_Model):
    type: EngineType = Field(
        default=EngineType.VLLM,
        description="vllm: the real engine; mocker: the simulated engine (no model weights, no GPU work).",
    )
    block_size: int = Field(
        default=32, ge=1, description="Tokens per KV block (vLLM on CPU needs a multiple of 32)."
    )
    max_model_len: int = Field(default=2048, ge=16, description="Context window in tokens.")
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse KV blocks of shared prompt prefixes."
    )
    max_num_seqs: int = Field(default=64, ge=1, description="Most sequences an engine runs at once.")
    kv_cache_gib: float = Field(default=1.0, gt=0, description="KV cache size per engine on CPU, in GiB.")
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="More vLLM engine arguments, by their Python names."
    )
    mocker: MockerSpec = Field(
        default_factory=MockerSpec, description="Simulated engine settings (type: mocker)."
    )


class RoutingStrategy(enum.StrEnum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    KV = "kv"


class ScorerName(enum.StrEnum):
    """The KV router's scorers, as named in ``routing.kv.weights`` and registered in
    ``core.kv_scoring.SCORERS`` (a test holds the three equal)."""

    PREFIX_OVERLAP = "prefix_overlap"
    KV_USAGE = "kv_usage"
    QUEUE_DEPTH = "queue_depth"
    INFLIGHT_PREFILL = "inflight_prefill"


def _weight(default: float, description: str) -> Any:
    return Field(default=default, ge=0, allow_inf_nan=False, description=description)


class KvScorerWeights(BaseModel):
    """Weight (>= 0) of each scorer in the router's combined cost.

    One field per ``ScorerName``, spelt as the scorer is (no camelCase alias), so the CRD lists the
    allowed names and the API server rejects a misspelt one at apply time, naming it. The defaults
    are the router's defaults (docs/benchmarks.md, KV routing on an oversubscribed cache).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra=_cel(
            (
                " || ".join(f"(has(self.{n}) && self.{n} > 0.0)" for n in ScorerName),
                "at least one scorer needs a weight > 0",
                "." + ScorerName.PREFIX_OVERLAP.value,
            )
        ),
    )

    prefix_overlap: float = _weight(1.0, "Share of the prompt's full blocks the worker already caches.")
    kv_usage: float = _weight(1.0, "Free KV blocks on the worker (1 - kv_usage).")
    queue_depth: float = _weight(0.3, "Running + waiting requests, min-max normalised across workers.")
    inflight_prefill: float = _weight(
        0.5, "Uncached prompt tokens this router sent recently that load reports do not show yet."
    )

    @model_validator(mode="after")
    def _one_scorer_counts(self) -> KvScorerWeights:
        if not any(self.as_dict().values()):
            raise ValueError("at least one scorer needs a weight > 0")
        return self

    def as_dict(self) -> dict[str, float]:
        """``{scorer name: weight}``, the form ``core.kv_scoring.build_scorers`` takes."""
        return {name.value: getattr(self, name.value) for name in ScorerName}


class KvRoutingSpec(_Model):
    """Settings of the KV-aware router (``routing.strategy: kv``)."""

    weights: KvScorerWeights = Field(
        default_factory=KvScorerWeights,
        description="Weight (>= 0) of each scorer in the combined cost: prefix_overlap (share of the "
        "prompt's blocks the worker already caches), kv_usage (free KV blocks), queue_depth "
        "(running + waiting requests), inflight_prefill (uncached tokens this router sent recently). "
        "A scorer left out keeps its default weight; 0 turns it off.",
    )
    temperature: float = Field(
        default=0.0,
        ge=0,
        description="Softmax temperature for sampling among near-equal workers; 0 always takes the best.",
    )


class RoutingSpec(_Model):
    strategy: RoutingStrategy = Field(
        default=RoutingStrategy.ROUND_ROBIN,
        description="How the processor picks a decode worker: round-robin, random, or kv "
        "(ask the KV-aware router, services.router, for the worker holding most of the prompt's prefix).",
    )
    kv: KvRoutingSpec = Field(
        default_factory=KvRoutingSpec, description="KV-aware router settings (strategy: kv)."
    )
    migration_limit: int = Field(
        default=3,
        ge=0,
        description="How many times one request (each of its n choices) may move to another decode "
        "worker when its worker dies, loses its lease or its transport mid-stream: the processor "
        "re-sends the prompt plus the tokens already streamed, so the client's stream continues. "
        "0 turns migration off (such a request then ends with a 503 error event).",
    )


class ConditionalDisaggregationSpec(_Model):
    """When a decode worker sends a prompt's prefill to the prefill queue instead of doing it itself."""

    max_local_prefill_length: int = Field(
        default=1000,
        ge=0,
        description="Prefill remotely only when the prompt's uncached tokens (prompt minus the expected "
        "prefix-cache hit) exceed this; shorter prefills run on the decode worker.",
    )
    max_prefill_queue_size: int = Field(
        default=2,
        ge=1,
        description="Prefill remotely only while the prefill queue holds fewer requests than this; "
        "when prefill workers are behind, decode workers prefill locally.",
    )


class KvConnector(enum.StrEnum):
    NIXL = "nixl"


class KvBufferDevice(enum.StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class SimulatedTransferSpec(_Model):
    """KV transfer time of the simulated engine: bytes / bandwidth, bytes = tokens x bytes per token."""

    bandwidth_gbps: float = Field(
        default=25.0,
        gt=0,
        description="KV transfer bandwidth in GB/s (25 GB/s: one 200 Gb/s RDMA NIC).",
    )
    kv_bytes_per_token: int | None = Field(
        default=None,
        ge=1,
        description="KV bytes per token; unset: derived from the model's config.json "
        "(2 x layers x KV heads x head size x 2 bytes).",
    )


class KvTransferSpec(_Model):
    connector: KvConnector = Field(
        default=KvConnector.NIXL,
        description="How KV blocks move from prefill to decode workers: nixl (vLLM's NixlConnector; "
        "UCX, RDMA where available). The simulated engine simulates the transfer instead.",
    )
    buffer_device: KvBufferDevice = Field(
        default=KvBufferDevice.CPU,
        description="Where NIXL registers the KV buffers: cpu (vLLM on CPU; host memory) or cuda (GPUs).",
    )
    simulated: SimulatedTransferSpec = Field(
        default_factory=SimulatedTransferSpec, description="Transfer model of the simulated engine."
    )


class PrefillQueueSpec(_Model):
    """The JetStream work queue between decode and prefill workers (docs/disaggregation.md says why)."""

    ack_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A message not acknowledged (nor marked in progress) for this long is redelivered: "
        "how long a dead prefill worker holds a request.",
    )
    max_deliver: int = Field(
        default=3,
        ge=1,
        description="Deliveries of one request before the queue gives up on it (the decode worker "
        "then prefills locally after remoteTimeoutSeconds).",
    )
    remote_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a decode worker waits for a remote prefill before prefilling locally.",
    )


class DisaggregationSpec(_Model):
    enabled: bool = Field(
        default=False,
        description="Run prefill on separate prefill workers (services.prefill) and move the KV cache to decode.",
    )
    conditional: ConditionalDisaggregationSpec = Field(
        default_factory=ConditionalDisaggregationSpec,
        description="Which prefills go remote (the rest run on the decode worker).",
    )
    kv_transfer: KvTransferSpec = Field(
        default_factory=KvTransferSpec, description="How the KV cache moves from prefill to decode."
    )
    queue: PrefillQueueSpec = Field(
        default_factory=PrefillQueueSpec, description="The prefill queue (NATS JetStream)."
    )


class RdmaSpec(_Model):
    """The RDMA preset of one role (docs/kubernetes.md): device, capabilities, /dev/shm, Multus, UCX."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.ucxEnv) || self.ucxEnv.all(k, k.startsWith('UCX_'))",
                "ucxEnv holds UCX_* variables only (use env)",
                ".ucxEnv",
            )
        )
    )

    enabled: bool = Field(default=False, description="Give the role's pods an RDMA device and UCX settings.")
    resource: str = Field(
        default="rdma/ib",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Extended resource of the RDMA device plugin the pods request (e.g. rdma/ib, "
        "rdma/rdma_shared_device_a, nvidia.com/hostdev).",
    )
    count: int = Field(default=1, ge=1, description="RDMA devices per pod (request = limit).")
    networks: list[
        Annotated[
            str,
            StringConstraints(pattern=r"^([a-z0-9-]+/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?(@[A-Za-z0-9_.-]+)?$"),
        ]
    ] = Field(
        default_factory=list,
        description="Multus NetworkAttachmentDefinitions ([namespace/]name[@interface]) attached to "
        "the pods (annotation k8s.v1.cni.cncf.io/networks).",
    )
    roce: bool = Field(
        default=False,
        description="RDMA over Converged Ethernet: sets UCX_IB_ADDR_TYPE=eth, without which UCX "
        "cannot address RoCE ports.",
    )
    shm_size: str = Field(
        default="8Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
        description="Size limit of /dev/shm (memory-backed); UCX and NCCL stage through it.",
    )
    ucx_env: dict[str, str] = Field(
        default_factory=dict,
        description="UCX_* variables over the preset's (UCX_TLS, UCX_RNDV_SCHEME, UCX_RNDV_THRESH, "
        "UCX_IB_ADDR_TYPE); the role's env still wins.",
    )

    @field_validator("ucx_env")
    @classmethod
    def _only_ucx_variables(cls, value: dict[str, str]) -> dict[str, str]:
        wrong = sorted(k for k in value if not k.startswith("UCX_"))
        if wrong:
            raise ValueError(f"ucxEnv holds UCX_* variables only, got {', '.join(wrong)} (use env)")
        return value


class AutoscalingTargets(_Model):
    """What the planner holds a role to. The SLA policy uses the latencies, the load policy the loads."""

    ttft_ms: float = Field(
        default=500.0, gt=0, description="Time to first token target (p90 of an interval), prefill's SLA."
    )
    itl_ms: float = Field(
        default=50.0, gt=0, description="Inter-token latency target (p90 of an interval), decode's SLA."
    )
    queue_per_replica: float = Field(
        default=2.0,
        gt=0,
        description="Load policy, prefill: prefill requests queued or running per replica to aim for.",
    )
    kv_usage: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Load policy, decode: KV cache usage (fraction of blocks) per replica to aim for.",
    )


class AutoscalingSpec(_Model):
    """Replicas chosen by the planner (prefill and decode only). Manual ``replicas`` applies when disabled."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
                ".minReplicas",
            )
        )
    )

    enabled: bool = Field(default=False, description="Let the planner set this role's replicas.")
    min_replicas: int = Field(
        default=1, ge=0, description="Fewest replicas (prefill may be 0: decode then prefills locally)."
    )
    max_replicas: int = Field(default=8, ge=1, description="Most replicas.")
    targets: AutoscalingTargets = Field(
        default_factory=AutoscalingTargets, description="Latency and load targets of this role."
    )
    scale_up_stabilization_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Scale up to the lowest recommendation of this window (0: act on the newest at once).",
    )
    scale_down_stabilization_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Scale down to the highest recommendation of this window; also the shortest time "
        "between two changes of direction.",
    )
    max_scale_up_step: int = Field(default=4, ge=1, description="Most replicas added by one decision.")
    max_scale_down_step: int = Field(default=1, ge=1, description="Most replicas removed by one decision.")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class RolloutSpec(_Model):
    """How the role's Deployment replaces pods on a change (Kubernetes): pods added above ``replicas``
    and pods taken down at once. The default never lowers ready pods but needs room (GPUs) for one more
    pod; ``maxSurge: 0, maxUnavailable: 1`` rolls without spare GPUs, one pod down at a time."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.maxSurge) || !has(self.maxUnavailable) || self.maxSurge + self.maxUnavailable >= 1",
                "maxSurge and maxUnavailable must not both be 0",
                ".maxSurge",
            )
        )
    )

    max_surge: int = Field(default=1, ge=0, description="Pods added above replicas during a rollout.")
    max_unavailable: int = Field(
        default=0, ge=0, description="Pods below replicas during a rollout (0: ready pods never drop)."
    )

    @model_validator(mode="after")
    def _progresses(self) -> RolloutSpec:
        if self.max_surge + self.max_unavailable < 1:
            raise ValueError("maxSurge and maxUnavailable must not both be 0")
        return self


class ServiceSpec(_Model):
    replicas: int = Field(
        default=1, ge=0, description="Number of processes (pods in Kubernetes) of this role."
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="GPUs one engine spans (worker roles); in Kubernetes the pod's GPU request.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment; wins over injected values."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes resource requests/limits."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes node labels the role's pods must run on."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Kubernetes tolerations of the role's pods (e.g. for GPU node taints).",
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="Kubernetes affinity of the role's pods (nodeAffinity, podAffinity, podAntiAffinity), "
        "e.g. to keep prefill and decode on nodes of one RDMA fabric.",
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="Listening port (frontend only).")
    rdma: RdmaSpec = Field(
        default_factory=RdmaSpec,
        description="RDMA preset (Kubernetes): device resource, IPC_LOCK/SYS_RESOURCE, /dev/shm, Multus "
        "networks, UCX env; for KV transfer between workers.",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        description="Planner-chosen replicas (prefill and decode roles only).",
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="Rolling update of the role's Deployment (Kubernetes; docs/kubernetes.md).",
    )


def _enabled(path: str) -> str:
    """CEL: ``<path>.autoscaling.enabled`` is set and true (``path`` under ``self``, each level optional)."""
    parts = [*path.split("."), "autoscaling", "enabled"]
    return " && ".join(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(len(parts))) + (
        f" && self.{'.'.join(parts)}"
    )


class ServicesSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            *(
                (
                    f"!({_enabled(role)})",
                    f"services.{role}.autoscaling: only prefill and decode autoscale",
                    f".{role}.autoscaling.enabled",
                )
                for role in ("frontend", "processor", "router")
            ),
            (
                f"!({_enabled('decode')}) || !has(self.decode.autoscaling.minReplicas) "
                "|| self.decode.autoscaling.minReplicas >= 1",
                "services.decode.autoscaling.minReplicas must be at least 1",
                ".decode.autoscaling.minReplicas",
            ),
        )
    )

    frontend: ServiceSpec = Field(
        default_factory=lambda: ServiceSpec(port=FIXED.frontend_port),
        description=f"The OpenAI-compatible HTTP server (port defaults to {FIXED.frontend_port}).",
    )
    processor: ServiceSpec = Field(
        default_factory=ServiceSpec, description="Tokenizes requests and routes them to workers."
    )
    decode: ServiceSpec = Field(
        default_factory=ServiceSpec,
        description="Engine workers that decode (and prefill, unless disaggregation is enabled).",
    )
    prefill: ServiceSpec | None = Field(
        default=None, description="Engine workers that only prefill; needs disaggregation.enabled."
    )
    router: ServiceSpec | None = Field(
        default=None,
        description="KV-aware routers: index the workers' KV cache events and answer the processor's "
        "routing decisions; needed by routing.strategy: kv.",
    )

    def get(self, role: Role) -> ServiceSpec | None:
        return getattr(self, role.value, None)


class NatsSpec(_Model):
    url: str | None = Field(
        default=None,
        description="NATS server URL(s), nats://host:port, comma-separated; defaults to the runtime's "
        "(the operator's chart setting in Kubernetes).",
    )


class EtcdSpec(_Model):
    endpoints: list[str] | None = Field(
        default=None,
        description="etcd client URLs, http://host:port; default to the runtime's "
        "(the operator's chart setting in Kubernetes).",
    )


class InfrastructureSpec(_Model):
    nats: NatsSpec = Field(default_factory=NatsSpec, description="Request plane and events.")
    etcd: EtcdSpec = Field(default_factory=EtcdSpec, description="Discovery of instances, under leases.")


class PlannerPolicy(enum.StrEnum):
    LOAD = "load"
    SLA = "sla"


class RatioBounds(_Model):
    min: float | None = Field(default=None, ge=0, description="Fewest prefill replicas per decode replica.")
    max: float | None = Field(default=None, gt=0, description="Most prefill replicas per decode replica.")


class PlannerSpec(_Model):
    """How the planner decides, for the roles with ``autoscaling.enabled``."""

    policy: PlannerPolicy = Field(
        default=PlannerPolicy.SLA,
        description="sla: predict the next interval's demand and size each role from its measured "
        "capacity; load: thresholds on queue depth and KV usage with hysteresis.",
    )
    interval_seconds: float = Field(default=10.0, gt=0, description="Seconds between two decisions.")
    prediction_horizon_seconds: float = Field(
        default=30.0,
        ge=0,
        description="sla policy: size roles for the demand predicted this far ahead (about the time a "
        "new replica takes to serve).",
    )
    profile: str | None = Field(
        default=None,
        description="sla policy with vLLM: the engine's measured timing profile (JSON, the simulated "
        "engine's table format) on the target hardware; simulated workers use their own timing model.",
    )
    prefill_decode_ratio: RatioBounds = Field(
        default_factory=RatioBounds, description="Optional bounds on prefill replicas per decode replica."
    )


class GraphSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!(has(self.services) && has(self.services.prefill) && (!has(self.services.prefill.replicas) "
                "|| self.services.prefill.replicas > 0)) "
                "|| (has(self.disaggregation) && has(self.disaggregation.enabled) && self.disaggregation.enabled)",
                "services.prefill needs disaggregation.enabled: true",
                ".services.prefill",
            ),
            (
                "!(has(self.routing) && has(self.routing.strategy) && self.routing.strategy == 'kv') "
                "|| (has(self.services) && has(self.services.router) "
                "&& (!has(self.services.router.replicas) || self.services.router.replicas >= 1))",
                "spec.routing.strategy kv needs spec.services.router with replicas >= 1",
                ".routing.strategy",
            ),
            (
                f"!(({_enabled('services.decode')}) || ({_enabled('services.prefill')})) "
                "|| (has(self.planner) && has(self.planner.policy) && self.planner.policy != 'sla') "
                "|| (has(self.engine) && has(self.engine.type) && self.engine.type != 'vllm') "
                "|| (has(self.planner) && has(self.planner.profile) && self.planner.profile != '')",
                "spec.planner.profile: the sla policy with vLLM workers needs the engine's measured "
                "timing profile (or spec.planner.policy: load)",
                ".planner.profile",
            ),
        )
    )

    model: ModelSpec = Field(description="The model every worker serves.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="Engine settings shared by all workers."
    )
    routing: RoutingSpec = Field(default_factory=RoutingSpec, description="How requests reach workers.")
    disaggregation: DisaggregationSpec = Field(
        default_factory=DisaggregationSpec, description="Separate prefill and decode workers."
    )
    services: ServicesSpec = Field(
        default_factory=ServicesSpec, description="One entry per role: replicas, resources, placement, env."
    )
    infrastructure: InfrastructureSpec = Field(
        default_factory=InfrastructureSpec, description="Where NATS and etcd are; unset means the defaults."
    )
    planner: PlannerSpec = Field(
        default_factory=PlannerSpec,
        description="Autoscaling of prefill and decode (roles with autoscaling.enabled).",
    )

    @model_validator(mode="after")
    def _prefill_needs_disaggregation(self) -> GraphSpec:
        prefill = self.services.prefill
        if prefill is not None and prefill.replicas > 0 and not self.disaggregation.enabled:
            raise ValueError("services.prefill needs disaggregation.enabled: true")
        return self

    def autoscaled(self) -> dict[Role, AutoscalingSpec]:
        """The worker roles whose replicas the planner decides, with their settings."""
        return {
            role: service.autoscaling
            for role in WORKER_ROLES
            if (service := self.services.get(role)) is not None and service.autoscaling.enabled
        }

    @model_validator(mode="after")
    def _autoscaling_only_for_workers(self) -> GraphSpec:
        for role in ("frontend", "processor", "router"):
            service = getattr(self.services, role)
            if service is not None and service.autoscaling.enabled:
                raise ValueError(f"services.{role}.autoscaling: only prefill and decode autoscale")
        if self.services.decode.autoscaling.enabled and self.services.decode.autoscaling.min_replicas < 1:
            raise ValueError("services.decode.autoscaling.minReplicas must be at least 1")
        return self

    @model_validator(mode="after")
    def _sla_planner_needs_a_profile_of_a_real_engine(self) -> GraphSpec:
        sla = self.planner.policy is PlannerPolicy.SLA
        if self.autoscaled() and sla and self.engine.type is EngineType.VLLM and not self.planner.profile:
            raise ValueError(
                "spec.planner.profile: the sla policy with vLLM workers needs the engine's measured "
                "timing profile (or spec.planner.policy: load)"
            )
        return self

    @model_validator(mode="after")
    def _kv_routing_needs_router(self) -> GraphSpec:
        router = self.services.router
        if self.routing.strategy is RoutingStrategy.KV and (router is None or router.replicas < 1):
            raise ValueError("spec.routing.strategy kv needs spec.services.router with replicas >= 1")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = None


class InferenceGraph(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    spec: GraphSpec

    @model_validator(mode="after")
    def _check_type(self) -> InferenceGraph:
        if self.api_version != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION}, got {self.api_version!r}")
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND}, got {self.kind!r}")
        return self

    def to_manifest(self) -> dict[str, Any]:
        """The manifest as Kubernetes would store it (camelCase, defaults filled in)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------- loading


def parse_graph(manifest: dict[str, Any]) -> InferenceGraph:
    """Validate a manifest; errors name the offending field as a dotted path."""
    try:
        return InferenceGraph.model_validate(manifest)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise SpecError(field, message) from None


def load_graph(path: str | Path, overrides: Sequence[str] = ()) -> InferenceGraph:
    """Read a manifest file, apply ``--set path=value`` overrides, validate."""
    text = Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    graphs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(graphs) != 1:
        raise SpecError("", f"{path}: expected exactly one {KIND} document, found {len(graphs)}")
    manifest = apply_overrides(graphs[0], overrides)
    return parse_graph(manifest)


def apply_overrides(manifest: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply Helm-style ``a.b.c=value`` overrides under ``spec`` (or from the root
    when the path starts with ``metadata.``/``spec.``). Values are parsed as YAML
    scalars, so ``4`` is an int and ``true`` a bool."""
    result = copy.deepcopy(manifest)
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise SpecError("--set", f"expected path=value, got {item!r}")
        keys = path.split(".")
        if keys[0] not in ("spec", "metadata"):
            keys = ["spec", *keys]
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise SpecError(path, f"{key} is not a mapping")
            node = child
        node[keys[-1]] = yaml.safe_load(raw) if raw else ""
    return result
