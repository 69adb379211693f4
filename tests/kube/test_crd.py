"""The InferenceGraph CRD: generated from the spec model, structural, and rejecting bad specs itself."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from inference_graph.core.spec import load_graph
from inference_graph_operator import crd

from .common import CONFIGS, ROOT

COMMITTED = ROOT / "crds" / "inferencegraph.yaml"
CHART_COPY = ROOT / "charts" / "dynamo" / "crds" / "inferencegraph.yaml"
REGENERATE = "python -m inference_graph_operator.crd > crds/inferencegraph.yaml && cp crds/inferencegraph.yaml charts/dynamo/crds/"


def _schema() -> dict:
    return crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict, path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_committed_crd_is_generated_from_the_model():
    assert COMMITTED.read_text() == crd.render_yaml(), f"CRD drifted from the spec model; run: {REGENERATE}"


def test_chart_crd_is_the_committed_crd():
    assert CHART_COPY.read_text() == COMMITTED.read_text(), f"charts/dynamo/crds is stale; run: {REGENERATE}"


def test_cli_prints_the_crd():
    out = subprocess.run(
        [sys.executable, "-m", "inference_graph_operator.crd"], capture_output=True, text=True, check=True
    )
    assert out.stdout == crd.render_yaml()


def test_crd_is_a_valid_custom_resource_definition(strict_validate):
    strict_validate(yaml.safe_load(COMMITTED.read_text()))


def test_crd_identity_and_columns():
    doc = crd.custom_resource_definition()
    assert doc["metadata"]["name"] == "inferencegraphs.inferencegraph.dev"
    spec = doc["spec"]
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["ig"]
    assert spec["names"]["categories"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Endpoint", "Age"} <= set(columns)
    assert {"Frontend", "Decode", "Prefill"} <= set(columns)  # per role, with -o wide
    assert all(columns[name].get("priority", 0) == 0 for name in ("Phase", "Ready", "Endpoint", "Age"))
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"phase", "observedGeneration", "services", "conditions", "endpoint"} <= set(status)
    role = status["services"]["additionalProperties"]["properties"]
    assert set(role) == {"desired", "replicas", "ready"}
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {"type", "status", "reason", "message", "lastTransitionTime"}


def test_schema_is_structural():
    """What the API server demands: a type everywhere (or preserve-unknown-fields), no
    $ref/anyOf/oneOf/allOf/not, no additionalProperties next to properties, no null defaults."""
    for path, node in _walk(_schema()):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title"} & set(node), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", ...) is not None, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_field_is_described():
    """So that `kubectl explain ig.spec...` teaches the spec."""
    spec = _schema()["properties"]["spec"]
    missing = [
        path for path, node in _walk(spec, "spec") if "description" not in node and not path.endswith("[]")
    ]
    missing = [p for p in missing if not p.endswith(".*")]
    assert missing == []


def test_model_constraints_survive_conversion():
    spec = _schema()["properties"]["spec"]["properties"]
    engine = spec["engine"]["properties"]
    assert engine["type"]["enum"] == ["vllm", "mocker"] and engine["type"]["default"] == "vllm"
    assert engine["blockSize"]["minimum"] == 1 and engine["blockSize"]["default"] == 32
    assert engine["kvCacheGib"] == {**engine["kvCacheGib"], "minimum": 0, "exclusiveMinimum": True}
    assert engine["extraArgs"]["x-kubernetes-preserve-unknown-fields"] is True
    service = spec["services"]["properties"]["decode"]["properties"]
    assert service["replicas"]["minimum"] == 0
    assert service["port"] == {**service["port"], "minimum": 1, "maximum": 65535, "nullable": True}
    assert spec["services"]["properties"]["prefill"]["nullable"] is True
    assert spec["model"]["properties"]["tokenizer"]["nullable"] is True


def test_unions_other_than_optional_are_refused():
    with pytest.raises(crd.SchemaError, match="x"):
        crd.structural_schema({"properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_pass_the_crd_schema(path):
    manifest = yaml.safe_load(path.read_text())
    assert crd.validate(manifest) == []


def test_a_fully_defaulted_graph_passes_the_crd_schema():
    """What the operator reads back (defaults filled in, None dropped) is valid too."""
    manifest = load_graph(CONFIGS[0]).to_manifest()
    assert crd.validate(manifest) == []


def _agg() -> dict:
    return yaml.safe_load((ROOT / "configs" / "agg.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "field", "text"),
    [
        (
            lambda s: s["services"]["decode"].update(replicas=-1),
            "spec.services.decode.replicas",
            "minimum of 0",
        ),
        (lambda s: s["engine"].update(type="tgi"), "spec.engine.type", "is not one of"),
        (lambda s: s["engine"].update(blockSize=0), "spec.engine.blockSize", "minimum of 1"),
        (lambda s: s["engine"].update(kvCacheGib=0), "spec.engine.kvCacheGib", "minimum of 0"),
        (lambda s: s["services"]["frontend"].update(port=70000), "spec.services.frontend.port", "maximum"),
        (lambda s: s["routing"].update(strategy="kv-ish"), "spec.routing.strategy", "is not one of"),
        (lambda s: s["engine"].update(blokSize=64), "spec.engine", "'blokSize' was unexpected"),
        (lambda s: s["model"].pop("source"), "spec.model", "'source' is a required property"),
        (lambda s: s["services"]["decode"].update(env={"A": 1}), "spec.services.decode.env.A", "not of type"),
        (
            lambda s: s["routing"].update(kv={"weights": {"prefx_overlap": 1.0}}),
            "spec.routing.kv.weights",
            "'prefx_overlap' was unexpected",
        ),
        (
            lambda s: s["routing"].update(kv={"weights": {"kv_usage": -1}}),
            "spec.routing.kv.weights.kv_usage",
            "minimum of 0",
        ),
    ],
    ids=[
        "replicas",
        "engine-type",
        "block-size",
        "kv-cache",
        "port",
        "strategy",
        "typo",
        "required",
        "env",
        "scorer-typo",
        "scorer-weight",
    ],
)
def test_bad_specs_are_rejected_by_the_crd_schema(edit, field, text):
    manifest = _agg()
    edit(manifest["spec"])
    errors = crd.validate(manifest)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}: ") and text in errors[0], errors[0]


def test_null_is_accepted_only_where_the_model_allows_it():
    manifest = _agg()
    manifest["spec"]["model"]["tokenizer"] = None
    assert crd.validate(manifest) == []
    manifest["spec"]["model"]["name"] = None
    assert crd.validate(manifest) == ["spec.model.name: None is not of type 'string'"]


def test_json_schema_round_trip_keeps_bounds():
    structural = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True}
    assert crd.json_schema(copy.deepcopy(structural)) == {"type": ["number", "null"], "exclusiveMinimum": 0}
