"""A real instruct model through VllmEngine: SmolLM2-135M-Instruct answers a fact."""

from __future__ import annotations

import pytest

from inference_graph import wire
from inference_graph.engines.vllm_engine import VllmEngine
from inference_graph.models import resolve_model_source

pytestmark = [pytest.mark.vllm, pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_smollm2_knows_the_capital_of_france():
    from transformers import AutoTokenizer

    path = resolve_model_source("builtin://smollm2-135m-instruct")  # ~30 s the first time, then cached
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    engine = VllmEngine(
        path, max_model_len=1024, kv_cache_gib=0.25, max_num_seqs=4, served_model_name="smollm2"
    )
    await engine.start()
    try:
        request = wire.GenerateRequest(
            "paris", list(prompt), wire.SamplingOptions(max_tokens=24, temperature=0.0)
        )
        frames = [f async for f in engine.generate(request)]
    finally:
        await engine.shutdown()
    tokens = [t for f in frames for t in f.token_ids]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    assert "Paris" in text, text
    assert frames[-1].finish_reason in ("stop", "length")
    assert frames[0].num_prompt_tokens == len(prompt)
