"""The InferenceGraph CRD on the real API server (the session cluster), driven with the pinned kubectl:
every config is admitted, printer columns and explain, structural-schema rejections and defaulting, the
status subresource, and the CEL rules (x-kubernetes-validations) that check across fields what the model's
validators check, each rejected by the server with a message naming the field.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from inference_graph.core.spec import SpecError, parse_graph

from .common import CONFIGS, ROOT, WIDE_HEADER


def load(path) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "InferenceGraph")


@pytest.fixture
def kube(kube, crd):
    return kube


def merge(kube, name: str, patch: str, status: bool = False, check: bool = True):
    """``kubectl patch ig <name> --type=merge`` of the object or (status) its status subresource."""
    sub = ["--subresource=status"] if status else []
    return kube.kubectl("patch", "ig", name, *sub, "--type=merge", "-p", patch, check=check)


def test_kubectl_applies_every_config_and_again_changes_nothing(kube):
    for config in CONFIGS:
        out = kube.kubectl("apply", "-f", str(config)).stdout
        assert f"inferencegraph.inferencegraph.dev/{load(config)['metadata']['name']} created" in out
    again = kube.kubectl("apply", "-f", str(ROOT / "configs")).stdout
    assert again.count("unchanged") == len(CONFIGS), again


def test_kubectl_get_prints_the_crd_printer_columns(kube):
    kube.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    merge(kube, name, '{"status": {"phase": "Ready", "ready": "3/3"}}', status=True)
    header, row = kube.kubectl("get", "ig").stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"]
    assert row.split()[:3] == [name, "Ready", "3/3"]
    assert kube.kubectl("get", "ig", "-o", "wide").stdout.splitlines()[0].split() == WIDE_HEADER
    assert name in kube.kubectl("get", "dynamo").stdout  # the CRD's category


def test_kubectl_explain_teaches_the_spec(kube):
    out = kube.kubectl("explain", "ig.spec").stdout
    assert "KIND:       InferenceGraph" in out
    assert "model\t<Object> -required-" in out


def test_schema_violations_are_rejected_naming_the_field(kube):
    graph = load(CONFIGS[0])
    graph["spec"]["services"]["decode"]["replicas"] = -1
    result = kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(graph), check=False)
    assert result.returncode != 0
    assert "spec.services.decode.replicas: Invalid value: -1" in result.stderr
    assert "greater than or equal to 0" in result.stderr


def test_unknown_field_is_rejected_by_server_side_field_validation(kube):
    graph = load(CONFIGS[0])
    graph["spec"]["modle"] = {"name": "typo"}
    result = kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(graph), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.modle"' in result.stderr


def test_schema_defaults_are_applied_and_the_generation_follows_the_spec_only(kube):
    kube.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    stored = kube.json("get", "ig", name)
    assert stored["spec"]["services"]["frontend"]["tensorParallelSize"] == 1  # a schema default
    assert stored["metadata"]["generation"] == 1

    kube.kubectl("label", "ig", name, "a=b")
    merge(kube, name, '{"status": {"phase": "Pending"}}', status=True)
    assert kube.json("get", "ig", name)["metadata"]["generation"] == 1
    merge(kube, name, '{"spec": {"services": {"decode": {"replicas": 2}}}}')
    assert kube.json("get", "ig", name)["metadata"]["generation"] == 2
    # the main resource ignores status; /status ignores everything else
    merge(kube, name, '{"status": {"phase": "Hacked"}}')
    merge(kube, name, '{"spec": {"services": {"decode": {"replicas": 5}}}}', status=True)
    stored = kube.json("get", "ig", name)
    assert stored["status"]["phase"] == "Pending"
    assert stored["spec"]["services"]["decode"]["replicas"] == 2


def test_status_outside_the_schema_is_rejected(kube):
    kube.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    result = merge(kube, name, '{"status": {"phase": "Sideways"}}', status=True, check=False)
    assert result.returncode != 0
    assert "status.phase: Unsupported value" in result.stderr


AGG = load(ROOT / "configs" / "agg.yaml")


def edited(**paths) -> dict:
    """AGG with ``a__b__c=value`` set (``None`` deletes)."""
    graph = copy.deepcopy(AGG)
    for path, value in paths.items():
        *parents, leaf = path.split("__")
        node = graph["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return graph


AUTOSCALING = {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
# (graph, the field the server's message names, words of the message); the model rejects each too
CROSS_FIELD = {
    "min-over-max": (
        edited(services__decode__autoscaling={"enabled": False, "minReplicas": 5, "maxReplicas": 2}),
        "spec.services.decode.autoscaling.minReplicas",
        "minReplicas must not exceed maxReplicas",
    ),
    "kv-without-router": (
        edited(routing__strategy="kv"),
        "spec.routing.strategy",
        "kv needs spec.services.router",
    ),
    "kv-with-no-router-replicas": (
        edited(routing__strategy="kv", services__router={"replicas": 0}),
        "spec.routing.strategy",
        "kv needs spec.services.router",
    ),
    "prefill-without-disaggregation": (
        edited(services__prefill={"replicas": 1}),
        "spec.services.prefill",
        "needs disaggregation.enabled: true",
    ),
    "frontend-autoscaling": (
        edited(services__frontend={"autoscaling": AUTOSCALING}),
        "spec.services.frontend.autoscaling.enabled",
        "only prefill and decode autoscale",
    ),
    "decode-min-zero": (
        edited(
            planner={"policy": "load"},
            services__decode__autoscaling={**AUTOSCALING, "minReplicas": 0},
        ),
        "spec.services.decode.autoscaling.minReplicas",
        "must be at least 1",
    ),
    "sla-vllm-without-profile": (
        edited(engine={"type": "vllm"}, services__decode__autoscaling=AUTOSCALING),
        "spec.planner.profile",
        "needs the engine's measured timing profile",
    ),
    "every-kv-weight-zero": (
        edited(
            routing={
                "kv": {
                    "weights": {"prefix_overlap": 0, "kv_usage": 0, "queue_depth": 0, "inflight_prefill": 0}
                }
            }
        ),
        "spec.routing.kv.weights.prefix_overlap",
        "at least one scorer needs a weight > 0",
    ),
    "non-ucx-variable": (
        edited(services__decode__rdma={"enabled": True, "ucxEnv": {"NCCL_DEBUG": "INFO"}}),
        "spec.services.decode.rdma.ucxEnv",
        "UCX_* variables only",
    ),
    "rollout-that-never-progresses": (
        edited(services__decode__rollout={"maxSurge": 0, "maxUnavailable": 0}),
        "spec.services.decode.rollout.maxSurge",
        "maxSurge and maxUnavailable must not both be 0",
    ),
}


@pytest.mark.parametrize("case", CROSS_FIELD)
def test_cross_field_rules_are_rejected_by_the_server_naming_the_field(kube, case):
    graph, field, words = CROSS_FIELD[case]
    with pytest.raises(SpecError):  # the model's validator: the server's CEL rule is its twin
        parse_graph(graph)
    result = kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(graph), check=False)
    assert result.returncode != 0, f"admitted: {case}"
    assert f"{field}: Invalid value" in result.stderr, result.stderr
    assert words in result.stderr, result.stderr


VALID_NEIGHBOURS = {
    "min-equals-max": edited(services__decode__autoscaling={"minReplicas": 2, "maxReplicas": 2}),
    "kv-with-router": edited(routing__strategy="kv", services__router={"replicas": 1}),
    "prefill-zero-without-disaggregation": edited(services__prefill={"replicas": 0}),
    "router-null": edited(services__router=None),
    "sla-mocker": edited(engine={"type": "mocker"}, services__decode__autoscaling=AUTOSCALING),
    "sla-vllm-with-profile": edited(
        engine={"type": "vllm"}, planner={"profile": "{}"}, services__decode__autoscaling=AUTOSCALING
    ),
    "load-vllm": edited(
        engine={"type": "vllm"}, planner={"policy": "load"}, services__decode__autoscaling=AUTOSCALING
    ),
    "one-kv-weight": edited(
        routing={"kv": {"weights": {"prefix_overlap": 0, "kv_usage": 0, "queue_depth": 1}}}
    ),
    "ucx-variable": edited(services__decode__rdma={"enabled": True, "ucxEnv": {"UCX_TLS": "rc"}}),
    "rollout-without-surge": edited(services__decode__rollout={"maxSurge": 0, "maxUnavailable": 1}),
}


def test_the_rules_admit_their_valid_neighbours(kube):
    """Each rule's nearest valid graph passes both the model and the server (one apply for all)."""
    docs = []
    for i, (case, graph) in enumerate(VALID_NEIGHBOURS.items()):
        parse_graph(graph)
        docs.append({**graph, "metadata": {"name": f"n{i}"}})
        assert case
    kube.apply(*docs)
    assert len(kube.json("get", "ig")["items"]) == len(VALID_NEIGHBOURS)
