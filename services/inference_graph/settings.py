"""Every environment variable, port and time the package uses, declared once.

This module and :mod:`inference_graph.environment` (standard library only, for the
readiness probe) are the settings home: nothing else touches ``os.environ``.

- :class:`Env`: the name of every environment variable the package reads, or sets for
  a child process or a library (vLLM, UCX, OpenMP). Code that builds an environment
  uses these names, never a literal.
- :class:`RuntimeSettings` (role processes and the local launcher) and
  :class:`OperatorSettings` (the operator): typed values read from an environment
  once, at start-up, by ``load()``; nothing reads the environment at import. The
  entry points load them and pass them down.
- :data:`FIXED`: ports and times that are not settable (drain, grace, default ports).

Bad values fail at start-up with a :class:`ConfigError` naming the variable. The
lowest layer of the package: it imports nothing else from it. ``python -m
inference_graph.settings --markdown`` prints docs/settings.md (a test holds them equal).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.config import JsonDict

from .environment import (
    ENV_NAMES,
    FIXED,
    SET_NOT_READ,
    ConfigError,
    Env,
    Fixed,
    environ,
    export,
    inherited_environment,
)

__all__ = [
    "ENV_NAMES",
    "FIXED",
    "SET_NOT_READ",
    "ConfigError",
    "Env",
    "Fixed",
    "OperatorSettings",
    "RuntimeSettings",
    "export",
    "inherited_environment",
    "markdown",
]


def _env(name: str, default: Any = None, meaning: str = "", readers: str = "", **kw: Any) -> Any:
    """A field read from the variable ``name``."""
    extra: JsonDict = {"readers": readers}
    if "default_factory" in kw:
        return Field(validation_alias=name, description=meaning, json_schema_extra=extra, **kw)
    return Field(default, validation_alias=name, description=meaning, json_schema_extra=extra, **kw)


class _FromEnv(BaseModel):
    """Settings read from a mapping of environment variables, once, by :meth:`load`."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, extra="ignore")

    # Variables whose empty value is a value ("" = none); any other empty variable means its default.
    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def load(cls, values: Mapping[str, str] | None = None) -> Self:
        """Read the variables from ``values`` (default: this process's environment)."""
        values = environ(values)
        raw: dict[str, str] = {}
        for name in cls.names():
            value = values.get(name)
            if value is not None and (value.strip() or name in cls.KEEP_EMPTY):
                raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else ""
            reason = error["msg"].removeprefix("Value error, ")
            raise ConfigError(name, raw.get(name, ""), reason) from None

    @classmethod
    def names(cls) -> list[str]:
        """The variables this class reads."""
        return [str(f.validation_alias) for f in cls.model_fields.values()]


def _urls(raw: str, variable: str, schemes: tuple[str, ...], default_scheme: str | None = None) -> list[str]:
    """Comma-separated URLs with one of ``schemes``; ``host:port`` gets ``default_scheme``."""
    urls = []
    for item in (s.strip() for s in raw.split(",")):
        if not item:
            continue
        url = item if "://" in item or default_scheme is None else f"{default_scheme}://{item}"
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"bad URL {item!r}; expected {schemes[0]}://host:port")
        try:
            parts.port  # noqa: B018 - urlsplit validates the port lazily
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        urls.append(url.rstrip("/"))
    if not urls:
        raise ValueError(f"no {variable} given")
    return urls


class RuntimeSettings(_FromEnv):
    """What a role process and the local launcher read from their environment."""

    nats_url: str = _env(
        Env.NATS_SERVER,
        f"nats://127.0.0.1:{FIXED.nats_port}",
        "NATS servers, comma-separated nats://, tls:// or ws(s):// URLs",
        "every role, launcher",
    )
    etcd_endpoints: list[str] = _env(
        Env.ETCD_ENDPOINTS,
        default_factory=lambda: [f"http://127.0.0.1:{FIXED.etcd_port}"],
        meaning="etcd endpoints, comma-separated; `host:port` means `http://host:port`",
        readers="every role, launcher, readiness probe",
    )
    namespace: str | None = _env(
        Env.IG_NAMESPACE,
        None,
        "prefix of every subject and key, so graphs can share NATS and etcd; unset: the graph's name",
        "every role, readiness probe",
    )
    lease_ttl: float = _env(
        Env.IG_LEASE_TTL, 10.0, "seconds an instance's etcd lease outlives its process", "every role", ge=1
    )
    log_level: str = _env(Env.IG_LOG_LEVEL, "INFO", "Python log level of a role process", "every role")
    stream_liveness: float = _env(
        Env.IG_STREAM_LIVENESS,
        6.0,
        "a request-plane stream that gets no frame and no heartbeat for this many seconds ends with a "
        "retryable 504 (the processor migrates it); servers send a heartbeat on a stream silent for a "
        "quarter of it",
        "every role",
        ge=0.5,
    )
    outage_wait: float = _env(
        Env.IG_OUTAGE_WAIT,
        5.0,
        "seconds a request waits for NATS while the connection is down, and for its responders to "
        "subscribe again after a reconnect, before it fails with 503",
        "every role",
        ge=0,
    )
    pod_name: str | None = _env(
        Env.POD_NAME,
        None,
        "prefix of instance ids (the operator injects it); unset: the role's name",
        "every role",
    )
    pod_ip: str | None = _env(
        Env.POD_IP, None, "the address NIXL peers connect to; unset: 127.0.0.1", "workers"
    )
    kubernetes_service_host: str | None = _env(
        Env.KUBERNETES_SERVICE_HOST,
        None,
        "set by Kubernetes in every pod: the frontend then listens on 0.0.0.0, not 127.0.0.1",
        "frontend, operator",
    )
    load_interval: float = _env(
        Env.IG_LOAD_INTERVAL, 1.0, "seconds between a worker's load reports to the routers", "workers", gt=0
    )
    prefill_concurrency: int = _env(
        Env.IG_PREFILL_CONCURRENCY,
        2,
        "prefill requests one prefill worker pulls at a time",
        "prefill workers",
        ge=1,
    )
    engines_per_process: int = _env(
        Env.IG_ENGINES_PER_PROCESS, 1, "engines one worker process hosts (simulated workers)", "workers", ge=1
    )
    frontend_url: str | None = _env(
        Env.IG_FRONTEND_URL,
        None,
        "the frontend's base URL, whose /metrics the planner reads (required)",
        "planner",
    )
    metrics_port: int | None = _env(
        Env.IG_METRICS_PORT,
        None,
        "serve the router's /metrics over HTTP on this port",
        "router",
        ge=1,
        le=65535,
    )
    model_cache: Path = _env(
        Env.IG_MODEL_CACHE,
        default_factory=lambda: Path.home() / ".cache" / "inference-graph" / "models",
        meaning="where builtin:// models are converted and kept",
        readers="launcher, frontend, processor, workers",
    )
    nixl_progress_thread: bool = _env(
        Env.IG_NIXL_PROGRESS_THREAD, False, "`1`: NIXL's own progress thread with host buffers", "workers"
    )
    nats_server_bin: str | None = _env(
        Env.IG_NATS_SERVER_BIN,
        None,
        "nats-server binary of the embedded server; unset: the pip package's",
        "launcher",
    )
    etcd_bin: str | None = _env(Env.IG_ETCD_BIN, None, "etcd binary of the embedded server", "launcher")
    vllm_cpu_kvcache_space: str | None = _env(
        Env.VLLM_CPU_KVCACHE_SPACE,
        None,
        "vLLM's own; overrides engine.kvCacheGib (a warning says so)",
        "workers",
    )
    nixl_side_channel_host: str | None = _env(
        Env.VLLM_NIXL_SIDE_CHANNEL_HOST, None, "vLLM's own; wins over POD_IP for NIXL's handshake", "workers"
    )

    @field_validator("nats_url", mode="before")
    @classmethod
    def _nats(cls, raw: str) -> str:
        return ",".join(_urls(raw, Env.NATS_SERVER, ("nats", "tls", "ws", "wss")))

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _etcd(cls, raw: str | list[str]) -> list[str]:
        return _urls(
            raw if isinstance(raw, str) else ",".join(raw), Env.ETCD_ENDPOINTS, ("http", "https"), "http"
        )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, raw: str | None) -> str | None:
        """It becomes a NATS token and an etcd key segment, so no dots or spaces."""
        name = raw.strip() if raw else None
        if name and any(c in name for c in ". *>/\t\n"):
            raise ValueError("must not contain '.', '/', spaces or wildcards")
        return name or None

    @field_validator("lease_ttl", "stream_liveness", "outage_wait")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value


class OperatorSettings(_FromEnv):
    """What the operator reads from its environment (charts/dynamo/templates/operator.yaml sets it)."""

    KEEP_EMPTY = frozenset(
        {
            Env.IG_OPERATOR_LIVENESS,
            Env.IG_GPU_RESOURCE,
            Env.IG_DEFAULT_NATS_SERVER,
            Env.IG_DEFAULT_ETCD_ENDPOINTS,
        }
    )

    watch_namespace: str = _env(
        Env.IG_WATCH_NAMESPACE, "", "watch only this namespace; empty: all", "operator"
    )
    liveness: str = _env(
        Env.IG_OPERATOR_LIVENESS,
        f"http://0.0.0.0:{FIXED.operator_health_port}/healthz",
        "kopf's liveness endpoint URL; empty: none",
        "operator",
    )
    resync_seconds: float = _env(
        Env.IG_RESYNC_SECONDS, 60.0, "every graph is reconciled at least this often", "operator", gt=0
    )
    log_level: str = _env(Env.IG_OPERATOR_LOG_LEVEL, "INFO", "the operator's log level", "operator")
    runtime_image: str = _env(
        Env.IG_RUNTIME_IMAGE, "ghcr.io/inference-graph/runtime:0.1.0", "image of the role pods", "operator"
    )
    runtime_image_pull_policy: str = _env(
        Env.IG_RUNTIME_IMAGE_PULL_POLICY, "IfNotPresent", "imagePullPolicy of the role pods", "operator"
    )
    gpu_resource: str = _env(
        Env.IG_GPU_RESOURCE,
        "nvidia.com/gpu",
        "GPU resource name; empty: request no GPUs (CPU clusters)",
        "operator",
    )
    default_nats_server: str = _env(
        Env.IG_DEFAULT_NATS_SERVER,
        f"nats://dynamo-nats:{FIXED.nats_port}",
        "NATS_SERVER given to graphs that name none; empty: none",
        "operator",
    )
    default_etcd_endpoints: tuple[str, ...] = _env(
        Env.IG_DEFAULT_ETCD_ENDPOINTS,
        (f"http://dynamo-etcd:{FIXED.etcd_port}",),
        "ETCD_ENDPOINTS given to graphs that name none, comma-separated; empty: none",
        "operator",
    )
    part_of: str = _env(Env.IG_PART_OF, "dynamo", "app.kubernetes.io/part-of of the children", "operator")
    kubeconfig: str | None = _env(
        Env.KUBECONFIG, None, "kubeconfig files; unset: the service account, else ~/.kube/config", "operator"
    )
    kubernetes_service_host: str | None = _env(
        Env.KUBERNETES_SERVICE_HOST, None, "set in every pod: use the service account", "operator"
    )

    @field_validator("default_etcd_endpoints", mode="before")
    @classmethod
    def _split(cls, raw: str | tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.strip() for e in raw.split(",") if e.strip()) if isinstance(raw, str) else raw


# ---------------------------------------------------------------- the table in docs/settings.md


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        text = ",".join(value) if isinstance(value, list) else str(value)
        return f"`{text}`".replace(str(Path.home()), "~")
    if field.default is None:
        return "unset"
    if isinstance(field.default, tuple | list):
        return f"`{','.join(field.default)}`"
    return f"`{field.default}`" if field.default != "" else "empty"


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return (text or str(annotation)).replace(" | None", " (optional)")


def markdown() -> str:
    """docs/settings.md: every variable, then the fixed values."""
    lines = [
        "# Settings",
        "",
        "Generated by `python -m inference_graph.settings --markdown` from",
        "`services/inference_graph/settings.py`; `tests/test_settings.py` fails when they differ.",
        "Each value is read once at start-up; an unset variable (or an empty one, unless the",
        "meaning says otherwise) takes the default. A bad value stops the process with the name.",
        "",
        "## Environment variables",
        "",
        "| name | type | default | read by | meaning |",
        "|---|---|---|---|---|",
    ]
    for model in (RuntimeSettings, OperatorSettings):
        for field in model.model_fields.values():
            extra = field.json_schema_extra
            assert isinstance(extra, dict), "every settings field is made by _env, with its readers"
            lines.append(
                f"| `{field.validation_alias}` | {_type(field.annotation)} | {_default(field)} "
                f"| {extra['readers']} | {field.description} |"
            )
    lines += [
        "",
        "## Set for libraries and children, not read",
        "",
        "| name | set by | value and why |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {who} | {why} |" for name, (who, why) in SET_NOT_READ.items()]
    lines += ["", "## Fixed ports and times", "", "| name | value | meaning |", "|---|---|---|"]
    for item in dataclasses.fields(Fixed):
        lines.append(f"| `{item.name}` | `{getattr(FIXED, item.name)}` | {item.metadata['meaning']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m inference_graph.settings --markdown")
    sys.stdout.write(markdown())
