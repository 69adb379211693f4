"""A disaggregated graph spec for the planner's tests."""

from __future__ import annotations

from inference_graph.core.spec import GraphSpec, parse_graph


def disaggregated_spec(planner: dict, services: dict, engine: dict | None = None) -> GraphSpec:
    return parse_graph(
        {
            "apiVersion": "inferencegraph.dev/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": "g"},
            "spec": {
                "model": {"name": "m", "source": "builtin://tiny-llama"},
                "engine": engine or {},
                "disaggregation": {"enabled": True},
                "planner": planner,
                "services": services,
            },
        }
    ).spec
