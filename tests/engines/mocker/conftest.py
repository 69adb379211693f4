"""Fixtures for the simulated engine's tests: a fake model directory (config files only)."""

from __future__ import annotations

import json

import pytest

from inference_graph.core.spec import EngineSpec, MockerSpec
from inference_graph.engines.mocker import MockerEngine

VOCAB = 512
EOS = 2


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """What the mocker reads from a model: config.json, generation_config.json, tokenizer.json."""
    root = tmp_path_factory.mktemp("fake-model")
    (root / "config.json").write_text(
        json.dumps({"vocab_size": VOCAB, "eos_token_id": EOS, "bos_token_id": 1})
    )
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, 3]}))
    added = [{"id": i, "content": f"<s{i}>", "special": True} for i in range(4)]
    (root / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    return str(root)


def engine_spec(**mocker) -> EngineSpec:
    """An EngineSpec for the mocker; ``block_size``/``max_num_seqs``/... go to the engine level."""
    engine_keys = {"block_size", "max_model_len", "max_num_seqs", "enable_prefix_caching"}
    top = {k: mocker.pop(k) for k in list(mocker) if k in engine_keys}
    mocker.setdefault("timing", "instant")
    return EngineSpec(type="mocker", mocker=MockerSpec(**mocker), **top)


@pytest.fixture
async def make_engine(model_dir):
    """Start mocker engines (``make_engine(block_size=4, speedup=10, ...)``); shut down at teardown."""
    engines: list[MockerEngine] = []

    async def make(**kwargs) -> MockerEngine:
        extra = {k: kwargs.pop(k) for k in ("eos_probability", "timing_model") if k in kwargs}
        engine = MockerEngine(
            engine_spec(**kwargs),
            model_dir,
            "mock",
            eos_probability=extra.get("eos_probability", 0.0),
            timing=extra.get("timing_model"),
        )
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.shutdown()
