"""The InferenceGraph resource as one typed model, shared by the launcher and the operator.

The same manifest works with ``kubectl apply -f`` and ``inference-graph serve``.
Field names are camelCase in YAML (Kubernetes convention) and snake_case in
Python. Unknown fields are rejected so a typo is an error that names the field,
not a silently ignored setting.
"""

from __future__ import annotations

import copy
import enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

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


class Role(str, enum.Enum):
    FRONTEND = "frontend"
    PROCESSOR = "processor"
    ROUTER = "router"
    DECODE = "decode"
    PREFILL = "prefill"


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


class EngineType(str, enum.Enum):
    VLLM = "vllm"


class EngineSpec(_Model):
    type: EngineType = EngineType.VLLM
    block_size: int = Field(
        default=32, ge=1, description="Tokens per KV block (vLLM on CPU needs a multiple of 32)."
    )
    max_model_len: int = Field(default=2048, ge=16, description="Context window in tokens.")
    enable_prefix_caching: bool = True
    max_num_seqs: int = Field(default=64, ge=1, description="Most sequences an engine runs at once.")
    kv_cache_gib: float = Field(default=1.0, gt=0, description="KV cache size per engine on CPU, in GiB.")
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="More vLLM engine arguments, by their Python names."
    )


class RoutingStrategy(str, enum.Enum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


class RoutingSpec(_Model):
    strategy: RoutingStrategy = RoutingStrategy.ROUND_ROBIN


class DisaggregationSpec(_Model):
    enabled: bool = False


class ServiceSpec(_Model):
    replicas: int = Field(default=1, ge=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment; wins over injected values."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes resource requests/limits."
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=1, le=65535, description="Listening port (frontend only).")


class ServicesSpec(_Model):
    frontend: ServiceSpec = Field(default_factory=lambda: ServiceSpec(port=8000))
    processor: ServiceSpec = Field(default_factory=ServiceSpec)
    decode: ServiceSpec = Field(default_factory=ServiceSpec)
    prefill: ServiceSpec | None = None

    def get(self, role: Role) -> ServiceSpec | None:
        return getattr(self, role.value, None)


class NatsSpec(_Model):
    url: str | None = None


class EtcdSpec(_Model):
    endpoints: list[str] | None = None


class InfrastructureSpec(_Model):
    nats: NatsSpec = Field(default_factory=NatsSpec)
    etcd: EtcdSpec = Field(default_factory=EtcdSpec)


class GraphSpec(_Model):
    model: ModelSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    disaggregation: DisaggregationSpec = Field(default_factory=DisaggregationSpec)
    services: ServicesSpec = Field(default_factory=ServicesSpec)
    infrastructure: InfrastructureSpec = Field(default_factory=InfrastructureSpec)

    @model_validator(mode="after")
    def _prefill_needs_disaggregation(self) -> GraphSpec:
        prefill = self.services.prefill
        if prefill is not None and prefill.replicas > 0 and not self.disaggregation.enabled:
            raise ValueError("services.prefill needs disaggregation.enabled: true")
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


def load_graph(path: str | Path, overrides: list[str] = ()) -> InferenceGraph:
    """Read a manifest file, apply ``--set path=value`` overrides, validate."""
    text = Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    graphs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(graphs) != 1:
        raise SpecError("", f"{path}: expected exactly one {KIND} document, found {len(graphs)}")
    manifest = apply_overrides(graphs[0], overrides)
    return parse_graph(manifest)


def apply_overrides(manifest: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
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
