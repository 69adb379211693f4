"""The process environment at its rawest: every variable's name, fixed ports and times,
and the one place that touches ``os.environ``.

Standard library only, so the readiness probe (``inference_graph_operator.probe``,
run every 10 s in every role pod) starts in milliseconds; the typed settings built
on it are in :mod:`inference_graph.settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Env:
    """Names of the environment variables: the single place each is spelt (plain ``str``s)."""

    # Read by role processes (RuntimeSettings); the operator or the launcher sets them.
    NATS_SERVER = "NATS_SERVER"
    ETCD_ENDPOINTS = "ETCD_ENDPOINTS"
    IG_NAMESPACE = "IG_NAMESPACE"
    IG_LEASE_TTL = "IG_LEASE_TTL"
    IG_LOG_LEVEL = "IG_LOG_LEVEL"
    IG_LOAD_INTERVAL = "IG_LOAD_INTERVAL"
    IG_STREAM_LIVENESS = "IG_STREAM_LIVENESS"
    IG_OUTAGE_WAIT = "IG_OUTAGE_WAIT"
    IG_PREFILL_CONCURRENCY = "IG_PREFILL_CONCURRENCY"
    IG_ENGINES_PER_PROCESS = "IG_ENGINES_PER_PROCESS"
    IG_FRONTEND_URL = "IG_FRONTEND_URL"
    IG_METRICS_PORT = "IG_METRICS_PORT"
    IG_MODEL_CACHE = "IG_MODEL_CACHE"
    IG_NIXL_PROGRESS_THREAD = "IG_NIXL_PROGRESS_THREAD"
    IG_NATS_SERVER_BIN = "IG_NATS_SERVER_BIN"
    IG_ETCD_BIN = "IG_ETCD_BIN"
    POD_NAME = "POD_NAME"
    POD_IP = "POD_IP"
    KUBERNETES_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
    VLLM_CPU_KVCACHE_SPACE = "VLLM_CPU_KVCACHE_SPACE"
    VLLM_NIXL_SIDE_CHANNEL_HOST = "VLLM_NIXL_SIDE_CHANNEL_HOST"
    # Read by the operator (OperatorSettings); the Helm chart sets them.
    IG_WATCH_NAMESPACE = "IG_WATCH_NAMESPACE"
    IG_OPERATOR_LIVENESS = "IG_OPERATOR_LIVENESS"
    IG_RESYNC_SECONDS = "IG_RESYNC_SECONDS"
    IG_OPERATOR_LOG_LEVEL = "IG_OPERATOR_LOG_LEVEL"
    IG_RUNTIME_IMAGE = "IG_RUNTIME_IMAGE"
    IG_RUNTIME_IMAGE_PULL_POLICY = "IG_RUNTIME_IMAGE_PULL_POLICY"
    IG_GPU_RESOURCE = "IG_GPU_RESOURCE"
    IG_DEFAULT_NATS_SERVER = "IG_DEFAULT_NATS_SERVER"
    IG_DEFAULT_ETCD_ENDPOINTS = "IG_DEFAULT_ETCD_ENDPOINTS"
    IG_PART_OF = "IG_PART_OF"
    KUBECONFIG = "KUBECONFIG"
    # Set for libraries and children, never read by the package (SET_NOT_READ).
    IG_REPLICA_INDEX = "IG_REPLICA_INDEX"
    POD_NAMESPACE = "POD_NAMESPACE"
    NODE_NAME = "NODE_NAME"
    PYTHONUNBUFFERED = "PYTHONUNBUFFERED"
    VLLM_ENABLE_V1_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
    OMP_NUM_THREADS = "OMP_NUM_THREADS"
    VLLM_CPU_OMP_THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
    VLLM_NO_USAGE_STATS = "VLLM_NO_USAGE_STATS"
    VLLM_DO_NOT_TRACK = "VLLM_DO_NOT_TRACK"
    HF_HUB_OFFLINE = "HF_HUB_OFFLINE"
    TRANSFORMERS_OFFLINE = "TRANSFORMERS_OFFLINE"
    VLLM_NIXL_SIDE_CHANNEL_PORT = "VLLM_NIXL_SIDE_CHANNEL_PORT"
    UCX_TLS = "UCX_TLS"
    UCX_RNDV_SCHEME = "UCX_RNDV_SCHEME"
    UCX_RNDV_THRESH = "UCX_RNDV_THRESH"
    UCX_IB_ADDR_TYPE = "UCX_IB_ADDR_TYPE"


ENV_NAMES: tuple[str, ...] = tuple(v for k, v in vars(Env).items() if k.isupper())

# Names the package sets for a library or a child process and never reads: who sets each, and why.
SET_NOT_READ: dict[str, tuple[str, str]] = {
    Env.POD_NAMESPACE: ("operator (downward API)", "the pod's namespace, for the user's own processes"),
    Env.NODE_NAME: ("operator (downward API)", "the pod's node, for the user's own processes"),
    Env.IG_REPLICA_INDEX: ("launcher", "the replica's index among its role's processes"),
    Env.PYTHONUNBUFFERED: (
        "launcher, operator",
        "`1`: role logs reach the terminal or `kubectl logs` at once",
    ),
    Env.VLLM_ENABLE_V1_MULTIPROCESSING: ("engines/vllm_engine.py", "`0`: the engine core in-process"),
    Env.OMP_NUM_THREADS: ("engines/vllm_engine.py", "`1`: one torch thread in the engine core"),
    Env.VLLM_CPU_OMP_THREADS_BIND: ("engines/vllm_engine.py", "`nobind`: no CPU pinning"),
    Env.VLLM_NO_USAGE_STATS: ("engines/vllm_engine.py", "`1`: no usage reporting"),
    Env.VLLM_DO_NOT_TRACK: ("engines/vllm_engine.py", "`1`: no usage reporting"),
    Env.HF_HUB_OFFLINE: ("engines/vllm_engine.py", "`1` for a local model directory: no hub lookups"),
    Env.TRANSFORMERS_OFFLINE: ("engines/vllm_engine.py", "`1` for a local model directory"),
    Env.VLLM_NIXL_SIDE_CHANNEL_PORT: (
        "engines/kv_transfer.py",
        "a free port per engine for NIXL's handshake",
    ),
    Env.UCX_TLS: ("operator (RDMA preset)", "UCX transports: `rc,ud,sm,self` (+ CUDA ones for GPU buffers)"),
    Env.UCX_RNDV_SCHEME: ("operator (RDMA preset)", "`get_zcopy`: zero-copy rendezvous"),
    Env.UCX_RNDV_THRESH: ("operator (RDMA preset)", "`0`: rendezvous for every message"),
    Env.UCX_IB_ADDR_TYPE: ("operator (RDMA preset)", "`eth` on RoCE ports"),
}


def _fixed(value: Any, meaning: str) -> Any:
    return field(default=value, metadata={"meaning": meaning})


@dataclass(frozen=True)
class Fixed:
    """Ports and times that are not settable; each is defined here once (``meaning`` for the docs)."""

    frontend_port: int = _fixed(8000, "the frontend's HTTP port when the graph names none")
    nats_port: int = _fixed(4222, "NATS client port of the default servers")
    etcd_port: int = _fixed(2379, "etcd client port of the default servers")
    operator_health_port: int = _fixed(8080, "the operator's liveness endpoint (the chart probes it)")
    drain_seconds: float = _fixed(
        30.0,
        "after SIGTERM, how long the frontend, processor and workers let streams in flight finish; "
        "the local launcher's stop grace",
    )
    router_drain_seconds: float = _fixed(5.0, "the router's drain: its replies are one message")
    prestop_seconds: int = _fixed(5, "a pod's preStop sleep: endpoints leave Services first")
    termination_margin_seconds: int = _fixed(10, "pod termination grace = drain + preStop + this margin")


FIXED = Fixed()


class ConfigError(ValueError):
    """An environment variable holds a value the package cannot use."""

    def __init__(self, variable: str, value: str, reason: str):
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"{variable}={value!r}: {reason}")


def environ(values: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``values`` if given (tests, a child's environment), else this process's environment."""
    return os.environ if values is None else values


def inherited_environment() -> dict[str, str]:
    """A copy of this process's environment, the base of a child process's."""
    return dict(os.environ)


def export(values: Mapping[str, str], *, overwrite: bool = True) -> None:
    """Set variables in this process's environment, for a library that reads them in-process
    (vLLM); with ``overwrite=False`` a value the user set wins."""
    for name, value in values.items():
        if overwrite:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
