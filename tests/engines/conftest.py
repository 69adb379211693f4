"""Shared fixtures for the engine tests: builtin models, prepared once per session."""

from __future__ import annotations

import pytest

from inference_graph.models import resolve_model_source


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The 2-layer random Llama (built in ~4 s on first use, then cached)."""
    return resolve_model_source("builtin://tiny-llama")
