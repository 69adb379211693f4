"""create_engine picks the plug-in from spec.engine; no engine is started here."""

from __future__ import annotations

import pytest

from inference_graph import errors
from inference_graph.core.spec import EngineSpec
from inference_graph.engines.factory import create_engine


def test_vllm_engine_from_spec():
    spec = EngineSpec(block_size=64, max_model_len=1024, kv_cache_gib=0.5, extra_args={"seed": 3})
    engine = create_engine(spec, "/models/x", "my-model")
    from inference_graph.engines.vllm_engine import VllmEngine

    assert isinstance(engine, VllmEngine)
    assert (engine.block_size, engine.max_model_len, engine.kv_cache_gib) == (64, 1024, 0.5)
    assert engine.extra_args == {"seed": 3}
    assert engine.served_model_name == "my-model"
    assert engine.info.block_size == 64 and engine.info.num_kv_blocks == 0  # known after start()


def test_unknown_engine_type_names_the_field():
    spec = EngineSpec.model_construct(type="sglang")
    with pytest.raises(ValueError, match=r"engine\.type.*'sglang'"):
        create_engine(spec, "/models/x", "m")


def test_owned_extra_args_are_rejected():
    with pytest.raises(ValueError, match=r"engine\.extraArgs\.kv_events_config"):
        create_engine(EngineSpec(extra_args={"kv_events_config": {}}), "/models/x", "m")


async def test_block_size_must_suit_cpu():
    engine = create_engine(EngineSpec(block_size=16), "/models/x", "m")
    with pytest.raises(ValueError, match="multiple of 32"):
        await engine.start()


def test_vllm_statuses_take_the_type_of_their_class():
    err = errors.for_status(400, "prompt too long", "messages")
    info = err.info
    assert (info.status, info.type, info.message, info.param) == (
        400,
        "invalid_request_error",
        "prompt too long",
        "messages",
    )
    assert errors.for_status(503, "down").type == "service_unavailable_error"
    assert errors.for_status(500, "boom").type == "server_error"
    assert errors.for_status(429, "busy").info.retryable
