import pytest

from inference_graph.models import resolve_model_source
from inference_graph.processing import PromptTokenizer


@pytest.fixture(scope="session")
def tiny() -> PromptTokenizer:
    """The tiny Llama's byte-level BPE tokenizer (ChatML template, eos <|im_end|>)."""
    tokenizer = PromptTokenizer.load(resolve_model_source("builtin://tiny-llama"))
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="session")
def smol() -> PromptTokenizer:
    """SmolLM2-135M-Instruct's real GPT-2-style tokenizer."""
    tokenizer = PromptTokenizer.load(resolve_model_source("builtin://smollm2-135m-instruct"))
    yield tokenizer
    tokenizer.close()
