"""How KV blocks move from a prefill engine to a decode engine: one plug-in interface, two plug-ins.

A prefill engine runs a ``Phase.PREFILL`` request and returns ``kv_transfer_params``
(where its KV is); the decode engine gets them with its ``Phase.DECODE`` request
and pulls the KV. The plug-in is the engine-specific part of that contract:

- ``NixlTransfer`` (vLLM): vLLM's NixlConnector does the transfer (UCX; RDMA on
  GPU clusters, host memory with ``buffer_device: cpu`` here). The plug-in
  gives each engine its own side-channel port (``VLLM_NIXL_SIDE_CHANNEL_PORT``),
  which the worker publishes in discovery, builds the ``kv_transfer_config``
  and checks params before a decode request uses them.
- ``SimulatedTransfer`` (mocker): no bytes move; the decode engine holds the
  blocks for ``tokens x kv_bytes_per_token / bandwidth`` seconds.

A transfer that cannot be used raises ``KvTransferError`` (HTTP 500, type
``server_error``, code ``kv_transfer_error``, retryable): a request never decodes
from KV it did not receive.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Protocol

from ..errors import ErrorType, ServingError, error_info
from ..settings import Env, RuntimeSettings, export

GB = 1e9


class KvTransferError(ServingError):
    """The KV of a remote prefill could not be used; the request fails (never decodes garbage).

    Retryable: another prefill of the same request may transfer.
    """

    CODE = "kv_transfer_error"

    def __init__(self, message: str):
        info = error_info(
            ErrorType.SERVER_ERROR, f"KV transfer failed: {message}", code=self.CODE, retryable=True
        )
        super().__init__(info)


class KvTransfer(Protocol):
    name: str

    def side_channel(self) -> tuple[str, int] | None:
        """Where peers reach this engine's transfer agent (published in discovery), if anywhere."""

    def check(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """``params`` of a DECODE request if this engine can use them; else ``KvTransferError``."""


def _require(params: dict[str, Any] | None, keys: tuple[str, ...], connector: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise KvTransferError(f"a {connector} decode request needs kv_transfer_params, got {params!r}")
    missing = [k for k in keys if k not in params]
    if missing:
        raise KvTransferError(f"kv_transfer_params lack {', '.join(missing)} (connector {connector})")
    return params


# ---------------------------------------------------------------- simulated (mocker)


def kv_bytes_per_token(model_path: str, dtype_bytes: int = 2) -> int:
    """2 (K and V) x layers x KV heads x head size x dtype bytes, from the model's config.json."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    text = config.get("text_config", config)
    heads = text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads", heads)
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    return 2 * text["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


class SimulatedTransfer:
    """Transfer time from bandwidth and KV size; params say how much KV and of what shape."""

    name = "simulated"
    _KEYS = ("connector", "num_tokens", "block_size", "kv_bytes_per_token")

    def __init__(self, bandwidth_gbps: float, bytes_per_token: int, block_size: int):
        if bandwidth_gbps <= 0:
            raise ValueError("spec.disaggregation.kvTransfer.simulated.bandwidthGbps must be > 0")
        self.bandwidth_gbps = bandwidth_gbps
        self.bytes_per_token = bytes_per_token
        self.block_size = block_size

    def side_channel(self) -> tuple[str, int] | None:
        return None

    def params(self, num_tokens: int, engine_id: str) -> dict[str, Any]:
        return {
            "connector": self.name,
            "engine_id": engine_id,
            "num_tokens": num_tokens,
            "block_size": self.block_size,
            "kv_bytes_per_token": self.bytes_per_token,
        }

    def seconds(self, num_tokens: int) -> float:
        """Simulated (model) time to move ``num_tokens`` tokens of KV."""
        return num_tokens * self.bytes_per_token / (self.bandwidth_gbps * GB)

    def check(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = _require(params, self._KEYS, self.name)
        if params["connector"] != self.name:
            raise KvTransferError(
                f"params come from connector {params['connector']!r}, this engine uses {self.name!r}"
            )
        for key, mine in (("block_size", self.block_size), ("kv_bytes_per_token", self.bytes_per_token)):
            if params[key] != mine:
                raise KvTransferError(f"prefill {key}={params[key]} does not match this engine's {mine}")
        return params


# ---------------------------------------------------------------- NIXL (vLLM)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NixlTransfer:
    """vLLM's NixlConnector; one per engine process (the side-channel env is process-wide)."""

    name = "nixl"
    _KEYS = ("remote_engine_id", "remote_request_id", "remote_host", "remote_port", "remote_block_ids")

    def __init__(
        self,
        buffer_device: str = "cpu",
        host: str | None = None,
        port: int | None = None,
        *,
        producer: bool,
        settings: RuntimeSettings | None = None,
    ):
        """``producer``: a prefill worker's engine (vLLM ``kv_role: kv_producer``, its KV is read by
        decode engines); else a decode worker's (``kv_consumer``: it reads remote KV, and still
        prefills locally the prompts that stay local). ``settings``: the process's (default: read
        from the environment now)."""
        settings = settings or RuntimeSettings.load()
        self.buffer_device = buffer_device
        self.kv_role = "kv_producer" if producer else "kv_consumer"
        # Peers connect to this address: the pod's IP in Kubernetes (POD_IP from the downward API),
        # loopback on one machine. An explicit VLLM_NIXL_SIDE_CHANNEL_HOST wins.
        self.host = host or settings.nixl_side_channel_host or settings.pod_ip or "127.0.0.1"
        self.progress_thread = settings.nixl_progress_thread
        # A free port per engine, never the inherited VLLM_NIXL_SIDE_CHANNEL_PORT: this process sets
        # that for the engine it starts, and a second engine would take the same port.
        self.port = port or free_port(self.host)

    def prepare_process_env(self) -> None:
        """vLLM reads the side channel from the environment of the engine core (our child)."""
        export({Env.VLLM_NIXL_SIDE_CHANNEL_HOST: self.host, Env.VLLM_NIXL_SIDE_CHANNEL_PORT: str(self.port)})

    def kv_transfer_config(self) -> dict[str, Any]:
        # One role per engine, as vLLM's NixlConnector asks (kv_both is deprecated). "fail": a KV
        # load error ends the request with an error (FINISHED_ERROR) instead of silently
        # recomputing, so a broken transfer is visible.
        config = {
            "kv_connector": "NixlConnector",
            "kv_role": self.kv_role,
            "kv_buffer_device": self.buffer_device,
            "kv_load_failure_policy": "fail",
        }
        if self.buffer_device == "cpu" and not self.progress_thread:
            # The same connector, loaded through a module that first turns off NIXL's
            # busy-polling progress thread in the engine core (see engines/nixl_cpu.py).
            config["kv_connector_module_path"] = "inference_graph.engines.nixl_cpu"
        return config

    def side_channel(self) -> tuple[str, int] | None:
        return self.host, self.port

    def check(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = _require(params, self._KEYS, self.name)
        if not params.get("do_remote_prefill", False):
            raise KvTransferError("kv_transfer_params are not a prefill's result (no do_remote_prefill)")
        return params
