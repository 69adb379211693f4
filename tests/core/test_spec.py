"""The InferenceGraph spec model: defaults, validation errors naming the field, --set overrides."""

from pathlib import Path

import pytest
import yaml

from inference_graph.core.spec import Role, SpecError, apply_overrides, load_graph, parse_graph

CONFIGS = Path(__file__).parents[2] / "configs"


def minimal(**spec) -> dict:
    return {
        "apiVersion": "inferencegraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "g"},
        "spec": {"model": {"name": "m", "source": "builtin://tiny-llama"}, **spec},
    }


def test_defaults_are_filled_in():
    graph = parse_graph(minimal())
    assert graph.spec.engine.block_size == 32
    assert graph.spec.services.frontend.port == 8000
    assert graph.spec.services.decode.replicas == 1
    assert graph.spec.services.get(Role.PREFILL) is None


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    load_graph(path)


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"engine": {"blockSize": 0}}, "spec.engine.blockSize", "greater than or equal to 1"),
        ({"engine": {"type": "tgi"}}, "spec.engine.type", "'vllm'"),
        ({"engine": {"typo": 1}}, "spec.engine.typo", "Extra inputs"),
        (
            {"services": {"decode": {"replicas": -1}}},
            "spec.services.decode.replicas",
            "greater than or equal",
        ),
        ({"routing": {"strategy": "nearest"}}, "spec.routing.strategy", "round-robin"),
        ({"services": {"prefill": {"replicas": 1}}}, "spec", "disaggregation.enabled"),
        ({"routing": {"strategy": "kv"}}, "spec", "spec.services.router"),
        (
            {"routing": {"strategy": "kv"}, "services": {"router": {"replicas": 0}}},
            "spec",
            "spec.routing.strategy kv",
        ),
        ({"routing": {"kv": {"temperature": -1}}}, "spec.routing.kv.temperature", "greater than or equal"),
        (
            {"services": {"frontend": {"autoscaling": {"enabled": True}}}},
            "spec",
            "services.frontend.autoscaling",
        ),
        (
            {"services": {"decode": {"autoscaling": {"enabled": True, "minReplicas": 0}}}},
            "spec",
            "services.decode.autoscaling.minReplicas",
        ),
        (
            {"services": {"decode": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}},
            "spec.services.decode.autoscaling",
            "minReplicas must not exceed maxReplicas",
        ),
        (
            {"services": {"decode": {"autoscaling": {"targets": {"kvUsage": 1.5}}}}},
            "spec.services.decode.autoscaling.targets.kvUsage",
            "less than or equal to 1",
        ),
        ({"planner": {"policy": "magic"}}, "spec.planner.policy", "'sla'"),
        (
            {"routing": {"kv": {"weights": {"prefx_overlap": 1.0}}}},
            "spec.routing.kv.weights.prefx_overlap",
            "Extra inputs are not permitted",
        ),
        (
            {"routing": {"kv": {"weights": {"kv_usage": -0.5}}}},
            "spec.routing.kv.weights.kv_usage",
            "greater than or equal to 0",
        ),
        (
            {"routing": {"kv": {"weights": {"queue_depth": "inf"}}}},
            "spec.routing.kv.weights.queue_depth",
            "finite number",
        ),
        (
            {
                "routing": {
                    "kv": {
                        "weights": {
                            "prefix_overlap": 0,
                            "kv_usage": 0,
                            "queue_depth": 0,
                            "inflight_prefill": 0,
                        }
                    }
                }
            },
            "spec.routing.kv.weights",
            "at least one scorer needs a weight > 0",
        ),
    ],
)
def test_invalid_spec_names_the_field(spec, field, text):
    with pytest.raises(SpecError) as info:
        parse_graph(minimal(**spec))
    assert info.value.field == field
    assert text in str(info.value)


def test_missing_model_names_the_field():
    manifest = minimal()
    del manifest["spec"]["model"]
    with pytest.raises(SpecError) as info:
        parse_graph(manifest)
    assert info.value.field == "spec.model"


def test_wrong_kind_is_rejected():
    manifest = minimal()
    manifest["kind"] = "Deployment"
    with pytest.raises(SpecError, match="kind must be InferenceGraph"):
        parse_graph(manifest)


def test_overrides_are_typed_and_do_not_touch_the_input():
    manifest = minimal()
    result = apply_overrides(manifest, ["services.decode.replicas=4", "engine.enablePrefixCaching=false"])
    graph = parse_graph(result)
    assert graph.spec.services.decode.replicas == 4
    assert graph.spec.engine.enable_prefix_caching is False
    assert "services" not in manifest["spec"]


def test_override_without_equals_is_an_error():
    with pytest.raises(SpecError, match="expected path=value"):
        apply_overrides(minimal(), ["services.decode.replicas"])


def test_load_graph_requires_one_graph_document(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump_all([minimal(), minimal()]))
    with pytest.raises(SpecError, match="exactly one InferenceGraph"):
        load_graph(path)


def test_manifest_round_trips():
    graph = parse_graph(minimal(services={"decode": {"replicas": 3}}))
    assert parse_graph(graph.to_manifest()) == graph


def test_kv_routing_with_a_router_is_valid_and_defaults_match_the_scorers():
    from inference_graph.core.kv_scoring import DEFAULT_WEIGHTS

    graph = parse_graph(minimal(routing={"strategy": "kv"}, services={"router": {"replicas": 1}}))
    assert graph.spec.routing.strategy == "kv"
    assert graph.spec.routing.kv.weights.as_dict() == DEFAULT_WEIGHTS
    assert graph.spec.routing.kv.temperature == 0.0
    assert graph.to_manifest()["spec"]["routing"]["kv"]["temperature"] == 0.0


def test_scorer_names_are_one_list():
    """The spec's enum, the weights model's fields and the router's scorer registry name the same
    scorers: a scorer added to one and not the others would be unreachable or unconfigurable."""
    from inference_graph.core.kv_scoring import SCORERS
    from inference_graph.core.spec import KvScorerWeights, ScorerName

    names = {"prefix_overlap", "kv_usage", "queue_depth", "inflight_prefill"}
    assert {n.value for n in ScorerName} == names
    assert set(KvScorerWeights.model_fields) == names
    assert set(SCORERS) == names


def test_weights_left_out_keep_their_default():
    graph = parse_graph(minimal(routing={"kv": {"weights": {"queue_depth": 0}}}))
    assert graph.spec.routing.kv.weights.as_dict() == {
        "prefix_overlap": 1.0,
        "kv_usage": 1.0,
        "queue_depth": 0.0,
        "inflight_prefill": 0.5,
    }
