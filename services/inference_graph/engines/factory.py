"""Build the engine a graph's ``spec.engine`` asks for.

The worker role calls ``create_engine`` and sees only ``base.Engine``. Engine
modules are imported lazily: importing vLLM takes seconds and sets up torch
(the simulated engine, ``mocker``, imports neither).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine

if TYPE_CHECKING:
    from ..core.spec import EngineSpec, KvTransferSpec
    from ..settings import RuntimeSettings

__all__ = ["create_engine"]


def create_engine(
    engine_spec: EngineSpec,
    model_path: str,
    served_model_name: str | None = None,
    kv_transfer: KvTransferSpec | None = None,
    *,
    kv_producer: bool = False,
    settings: RuntimeSettings | None = None,
) -> Engine:
    """An unstarted engine for ``engine_spec``; call ``await engine.start()``.

    ``kv_transfer`` (``spec.disaggregation.kvTransfer`` when disaggregation is
    enabled) lets the engine run PREFILL and DECODE phases: vLLM through NIXL,
    the simulated engine with simulated transfer time. ``kv_producer``: the
    engine is a prefill worker's (its KV is read by others), else a decode
    worker's; vLLM configures its connector for that one role. ``settings``: the
    worker process's (default: read from the environment when the engine is made).
    """
    kind = getattr(engine_spec.type, "value", engine_spec.type)
    if kind == "vllm":
        from .kv_transfer import NixlTransfer
        from .vllm_engine import VllmEngine

        return VllmEngine(
            model_path,
            block_size=engine_spec.block_size,
            max_model_len=engine_spec.max_model_len,
            enable_prefix_caching=engine_spec.enable_prefix_caching,
            max_num_seqs=engine_spec.max_num_seqs,
            kv_cache_gib=engine_spec.kv_cache_gib,
            extra_args=dict(engine_spec.extra_args),
            served_model_name=served_model_name,
            kv_transfer=(
                NixlTransfer(kv_transfer.buffer_device.value, producer=kv_producer, settings=settings)
                if kv_transfer
                else None
            ),
            settings=settings,
        )
    if kind == "mocker":
        from .mocker import MockerEngine

        return MockerEngine(
            engine_spec,
            model_path,
            served_model_name,
            eos_probability=engine_spec.mocker.eos_probability,
            kv_transfer=_simulated_transfer(engine_spec, model_path, kv_transfer) if kv_transfer else None,
        )
    raise ValueError(f"engine.type: unknown engine type {kind!r}; known: vllm, mocker")


def _simulated_transfer(engine_spec: EngineSpec, model_path: str, kv_transfer: KvTransferSpec):
    from .kv_transfer import SimulatedTransfer, kv_bytes_per_token

    simulated = kv_transfer.simulated
    per_token = simulated.kv_bytes_per_token
    if per_token is None:
        try:
            per_token = kv_bytes_per_token(model_path)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(
                "spec.disaggregation.kvTransfer.simulated.kvBytesPerToken: not set, and the model's "
                f"config.json does not give it ({exc!r}); set it"
            ) from None
    return SimulatedTransfer(simulated.bandwidth_gbps, per_token, engine_spec.block_size)
