"""Model sources: builtin models are built once into the cache; other schemes resolve or fail clearly."""

import pytest

from inference_graph.models import ModelSourceError, resolve_model_source, sources


def test_tiny_builtin_is_built_once_and_reused(tmp_path):
    first = resolve_model_source("builtin://tiny-llama", tmp_path)
    stamp = (tmp_path / "tiny-llama" / "config.json").stat().st_mtime_ns
    assert resolve_model_source("builtin://tiny-llama", tmp_path) == first
    assert (tmp_path / "tiny-llama" / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-llama-")]  # no staging left


def test_unknown_builtin_names_the_known_ones(tmp_path):
    with pytest.raises(ModelSourceError, match="smollm2-135m-instruct"):
        resolve_model_source("builtin://gpt-9", tmp_path)


def test_local_directory_needs_a_config(tmp_path):
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(f"file://{tmp_path}") == str(tmp_path)


def test_hub_ids_pass_through():
    assert (
        resolve_model_source("hf://HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_pvc_source_is_the_operator_mount(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "PVC_MOUNT_ROOT", tmp_path)
    with pytest.raises(ModelSourceError, match="exist only in pods the operator creates"):
        resolve_model_source("pvc://weights/llama")
    (tmp_path / "weights" / "llama").mkdir(parents=True)
    assert resolve_model_source("pvc://weights/llama") == str(tmp_path / "weights" / "llama")
