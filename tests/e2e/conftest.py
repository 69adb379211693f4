"""Fixtures for end-to-end tests: real NATS + etcd for the session, graphs on demand."""

from __future__ import annotations

import pytest

from inference_graph.models import resolve_model_source
from inference_graph.runtime.embedded import free_port

from .graph import LocalGraph


@pytest.fixture(scope="session")
def infrastructure(nats_server, etcd_server):
    """NATS_SERVER and ETCD_ENDPOINTS for every graph of the session (graphs are namespaced by name)."""
    return {"NATS_SERVER": nats_server.url, "ETCD_ENDPOINTS": ",".join(etcd_server.endpoints)}


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return resolve_model_source("builtin://tiny-llama")


def _launch(infrastructure, log_dir, name, config, overrides, env) -> LocalGraph:
    graph = LocalGraph(
        config,
        free_port(),
        [f"metadata.name={name}", *overrides],
        {**infrastructure, "IG_LEASE_TTL": "3", **(env or {})},
        log_dir / f"{name}.log",
    )
    graph.wait_ready()
    return graph


@pytest.fixture
def start_graph(infrastructure, tmp_path, tiny_model):
    """Start graphs from a config file with overrides; each is stopped when the test ends."""
    started: list[LocalGraph] = []

    def start(name: str, config: str = "configs/agg.yaml", overrides=(), env=None) -> LocalGraph:
        started.append(_launch(infrastructure, tmp_path, name, config, overrides, env))
        return started[-1]

    yield start
    for graph in started:
        graph.stop()


TINY_OVERRIDES = [
    "model.name=tiny",
    "model.source=builtin://tiny-llama",
    "engine.maxModelLen=4096",
    "engine.kvCacheGib=0.25",
]


@pytest.fixture(scope="module")
def tiny_graph(infrastructure, tmp_path_factory, tiny_model, request):
    """The default graph serving the tiny random model, shared by a module: fast to start, meaningless text."""
    name = request.module.__name__.rsplit(".", 1)[-1].replace("_", "-")
    graph = _launch(
        infrastructure, tmp_path_factory.mktemp("graphs"), name, "configs/agg.yaml", TINY_OVERRIDES, None
    )
    yield graph
    graph.stop()
