"""Server-side apply and per-role scaling, against the real control plane (tests/cluster).

The operator runs as a subprocess with the identity of the chart's ServiceAccount (the chart's
namespaced Role, a TokenRequest token), so the real authorizer checks every call it makes. It writes every
child with server-side apply under one field manager: others' fields on a child are kept, a field it
renders that someone else changed is reported (an Event on the graph) and forced back. Each worker role
has an InferenceGraphScaler whose scale subresource ``kubectl scale`` and an HPA (with the real
controller-manager) use; the planner's decisions reach the role through it too.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from inference_graph_operator.crd import render_yaml
from inference_graph_operator.kube import FIELD_MANAGER
from support import eventually_sync

from .common import ROOT
from .operator_process import Operator

SCALER_CRD = ROOT / "crds" / "inferencegraphscaler.yaml"
SCALER_CRD_CHART = ROOT / "charts" / "dynamo" / "crds" / "inferencegraphscaler.yaml"
DEADLINE = 60.0  # seconds; a loaded 2-core machine runs several test sessions at once
HPA_DEADLINE = 120.0  # the HPA controller syncs every 15 s
ON_CLUSTER = (pytest.mark.cluster, pytest.mark.timeout(5400))  # the session fixture may build first
T = TypeVar("T")


def on_cluster(test: Callable) -> Callable:
    for mark in ON_CLUSTER:
        test = mark(test)
    return test


def wait_for(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    return eventually_sync(check, timeout=timeout, interval=0.2, what=what)


# ---------------------------------------------------------------- no cluster


def test_the_committed_scaler_crd_is_generated_and_the_chart_ships_it():
    regenerate = (
        "python -m inference_graph_operator.crd scaler > crds/inferencegraphscaler.yaml"
        " && cp crds/inferencegraphscaler.yaml charts/dynamo/crds/"
    )
    assert SCALER_CRD.read_text() == render_yaml("scaler"), f"stale; run: {regenerate}"
    assert SCALER_CRD_CHART.read_text() == SCALER_CRD.read_text(), f"stale chart copy; run: {regenerate}"
    version = yaml.safe_load(SCALER_CRD.read_text())["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


# ---------------------------------------------------------------- fixtures


def chart_identity(kube) -> Path:
    """The chart's ServiceAccount and namespaced Role + RoleBinding in the test's namespace (what
    ``helm install --set operator.watchNamespaceOnly=true`` makes), and a kubeconfig with its token."""
    rendered = kube.helm(
        "template",
        "dynamo",
        str(ROOT / "charts" / "dynamo"),
        "--set",
        "operator.watchNamespaceOnly=true",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    kube.apply(*docs)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{kube.namespace}:{account}"

    def granted() -> bool:  # the authorizer's RBAC cache takes a moment to see a new binding
        return all(
            kube.kubectl("auth", "can-i", *check, f"--as={user}", check=False).stdout.strip() == "yes"
            for check in (
                ("update", "inferencegraphs", "--subresource=finalizers"),
                ("patch", "inferencegraphscalers"),
            )
        )

    wait_for(granted, "the chart's Role in force")
    return kube.service_account_kubeconfig(account)


@pytest.fixture
def operator(kube, crd, tmp_path, etcd_server) -> Iterator[Operator]:
    env = {
        "IG_WATCH_NAMESPACE": kube.namespace,  # as the chart sets it with watchNamespaceOnly
        "IG_DEFAULT_ETCD_ENDPOINTS": ",".join(etcd_server.endpoints),  # where the planners' decisions are
        "IG_RUNTIME_IMAGE": "registry.example/runtime:test",
    }
    op = Operator(chart_identity(kube), tmp_path / "operator.log", env).start()
    try:
        yield op
    finally:
        op.stop()
        log = op.log()
        print(log[-8000:])  # shown by pytest only when the test fails
        # any call refused (403 Forbidden) is a rule the chart lacks
        refused = [line for line in log.splitlines() if "forbidden" in line.lower()]
        assert not refused, f"the chart's RBAC lacks something the operator uses: {refused[:3]}"


# ---------------------------------------------------------------- reading the cluster


def graph_manifest(name: str, **services: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "inferencegraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "source": "builtin://tiny"},
            "engine": {"type": "mocker"},
            "disaggregation": {"enabled": True},
            "services": {"decode": {"replicas": 2}, "prefill": {"replicas": 1}, **services},
        },
    }


def unique(prefix: str) -> str:
    """Graph names are also the planner's etcd key, shared by the session's tests: unique ones."""
    return f"{prefix}-{secrets.token_hex(3)}"


def get(kube, kind: str, name: str) -> dict[str, Any] | None:
    return kube.json("get", kind, name, "--show-managed-fields")


def replicas(kube, name: str) -> int | None:
    deployment = get(kube, "deployment", name)
    return deployment["spec"]["replicas"] if deployment else None


def children(kube, graph: str) -> dict[tuple[str, str], dict[str, Any]]:
    listing = kube.json(
        "get",
        "deployments,services,configmaps,inferencegraphscalers",
        "--show-managed-fields",
        "-l",
        f"app.kubernetes.io/instance={graph},app.kubernetes.io/managed-by=inference-graph-operator",
    )
    return {(item["kind"], item["metadata"]["name"]): item for item in listing["items"]}


def expected(graph: str) -> set[tuple[str, str]]:
    return {
        ("ConfigMap", f"{graph}-graph"),
        ("Service", f"{graph}-frontend"),
        *(("Deployment", f"{graph}-{r}") for r in ("frontend", "processor", "decode", "prefill")),
        ("InferenceGraphScaler", f"{graph}-decode"),
        ("InferenceGraphScaler", f"{graph}-prefill"),
    }


def created(kube, graph: str) -> dict[tuple[str, str], dict[str, Any]]:
    def check():
        objs = children(kube, graph)
        ig = get(kube, "ig", graph) or {}
        seen = (ig.get("status") or {}).get("observedGeneration") == ig.get("metadata", {}).get("generation")
        return objs if set(objs) == expected(graph) and seen else None

    return wait_for(check, f"{graph}'s children and status")


def managers(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(manager, operation, subresource) of each managedFields entry."""
    return [
        (e["manager"], e["operation"], e.get("subresource", ""))
        for e in obj["metadata"].get("managedFields") or []
    ]


def owner_of(obj: dict[str, Any], *path: str) -> list[str]:
    """The managers whose fieldsV1 include ``path`` (e.g. "spec", "replicas")."""
    out = []
    for entry in obj["metadata"].get("managedFields") or []:
        node = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(part if part.startswith(("f:", "k:", "v:")) else f"f:{part}")
            if node is None:
                break
        else:
            out.append(entry["manager"])
    return out


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def conflict_events(kube, graph: str) -> list[dict[str, Any]]:
    listing = kube.json(
        "get", "events", "--field-selector", f"involvedObject.name={graph},reason=FieldConflict"
    )
    return listing["items"]


# ---------------------------------------------------------------- server-side apply


@on_cluster
def test_children_are_applied_under_one_field_manager_and_others_fields_are_kept(kube, operator):
    name = unique("ssa")
    kube.apply(graph_manifest(name))
    for key, obj in created(kube, name).items():
        ours = [m for m in managers(obj) if m[0] == FIELD_MANAGER]
        # every write of the operator is an apply (no create, no merge patch), the scalers' status too
        assert ours and {op for _, op, _ in ours} == {"Apply"}, (key, managers(obj))
        assert (FIELD_MANAGER, "Apply", "") in ours, key

    # a user's label, annotation and env var on a child, then a spec change that re-applies the child
    prefill = f"{name}-prefill"
    kube.kubectl("label", "deployment", prefill, "team=search")
    kube.kubectl("annotate", "deployment", prefill, "example.com/note=kept")
    kube.kubectl("set", "env", f"deployment/{prefill}", "USER_ADDED=1")
    before = get(kube, "deployment", prefill)["metadata"]["generation"]
    kube.apply(graph_manifest(name, prefill={"replicas": 1, "env": {"EXTRA": "1"}}))

    deployment = wait_for(
        lambda: (d := get(kube, "deployment", prefill)) and env_of(d).get("EXTRA") == "1" and d,
        "prefill applied again with the new env",
    )
    assert deployment["metadata"]["generation"] > before
    assert deployment["metadata"]["labels"]["team"] == "search"
    assert deployment["metadata"]["annotations"]["example.com/note"] == "kept"
    assert env_of(deployment)["USER_ADDED"] == "1"
    # each field still belongs to whoever set it
    assert owner_of(deployment, "metadata", "labels", "team") == ["kubectl-label"]
    assert owner_of(deployment, "metadata", "annotations", "example.com/note") == ["kubectl-annotate"]
    assert FIELD_MANAGER in owner_of(deployment, "metadata", "labels", "app.kubernetes.io/managed-by")
    assert conflict_events(kube, name) == []  # nothing the operator renders was touched


@on_cluster
def test_a_conflicting_field_is_reported_and_forced_back(kube, operator):
    name = unique("conflict")
    kube.apply(graph_manifest(name))
    created(kube, name)
    decode = f"{name}-decode"

    kube.kubectl("scale", "deployment", decode, "--replicas=5")  # the Deployment, not the role's scaler
    wait_for(lambda: replicas(kube, decode) == 2, "decode's Deployment forced back to 2")
    events = wait_for(lambda: conflict_events(kube, name), "a FieldConflict event on the graph")
    message = events[0]["message"]
    assert events[0]["type"] == "Warning" and f"Deployment {decode}" in message
    assert ".spec.replicas" in message and "kubectl" in message, message
    assert "forced back to the graph's values" in message
    assert owner_of(get(kube, "deployment", decode), "spec", "replicas") == [FIELD_MANAGER]

    kube.kubectl("set", "env", f"deployment/{decode}", f"IG_NAMESPACE=not-{name}")  # a value it renders
    wait_for(lambda: env_of(get(kube, "deployment", decode))["IG_NAMESPACE"] == name, "IG_NAMESPACE restored")
    assert "IG_NAMESPACE" in "".join(e["message"] for e in conflict_events(kube, name))
    assert "conflict:" in operator.log()  # and a warning in the operator's log


# ---------------------------------------------------------------- per-role scale


@on_cluster
def test_kubectl_scale_on_a_roles_scaler_scales_that_role_only(kube, operator):
    name = unique("scale")
    kube.apply(graph_manifest(name))
    before = created(kube, name)

    kube.kubectl("scale", "inferencegraphscaler", f"{name}-decode", "--replicas=3")
    wait_for(lambda: replicas(kube, f"{name}-decode") == 3, "decode's Deployment at 3")
    after = children(kube, name)
    for role in ("frontend", "processor", "prefill"):
        key = ("Deployment", f"{name}-{role}")
        assert after[key]["spec"]["replicas"] == before[key]["spec"]["replicas"], role
        assert after[key]["metadata"]["generation"] == before[key]["metadata"]["generation"], role
    decode_template = before[("Deployment", f"{name}-decode")]["spec"]["template"]
    assert after[("Deployment", f"{name}-decode")]["spec"]["template"] == decode_template  # no rollout
    ig = wait_for(
        lambda: (g := get(kube, "ig", name))["status"]["services"]["decode"]["desired"] == 3 and g,
        "the graph's status shows decode's new desired count",
    )
    assert ig["status"]["services"]["prefill"]["desired"] == 1

    # the scaler's status follows the pods (kwok makes them Ready); the scale subresource reads it
    wait_for(
        lambda: (get(kube, "igs", f"{name}-decode").get("status") or {}).get("readyReplicas") == 3,
        "scaler status: 3 ready pods",
    )
    scale = json.loads(kube.kubectl("get", "--raw", scale_path(kube, f"{name}-decode")).stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert f"app.kubernetes.io/instance={name}" in scale["status"]["selector"]
    assert "app.kubernetes.io/component=decode" in scale["status"]["selector"]
    printed = kube.kubectl("get", "igs", f"{name}-decode").stdout.splitlines()
    assert printed[0].split() == ["NAME", "GRAPH", "ROLE", "DESIRED", "CURRENT", "READY", "AGE"]
    assert printed[1].split()[:6] == [f"{name}-decode", name, "decode", "3", "3", "3"]

    # the scale is now kubectl's: the graph's replicas for decode no longer apply to it (one writer)
    scaler = get(kube, "igs", f"{name}-decode")
    assert owner_of(scaler, "spec", "replicas") == ["kubectl"]
    kube.apply(graph_manifest(name, decode={"replicas": 4}, prefill={"replicas": 2}))
    wait_for(
        lambda: replicas(kube, f"{name}-prefill") == 2, "prefill (never scaled by hand) follows the graph"
    )
    assert replicas(kube, f"{name}-decode") == 3
    assert get(kube, "igs", f"{name}-decode")["spec"]["replicas"] == 3


def scale_path(kube, scaler: str) -> str:
    return (
        f"/apis/inferencegraph.dev/v1alpha1/namespaces/{kube.namespace}/inferencegraphscalers/{scaler}/scale"
    )


@on_cluster
def test_an_hpa_scales_a_role_through_its_scaler(kube, operator):
    name = unique("hpa")
    kube.apply(graph_manifest(name))
    created(kube, name)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"{name}-prefill"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "inferencegraph.dev/v1alpha1",
                "kind": "InferenceGraphScaler",
                "name": f"{name}-prefill",
            },
            "minReplicas": 2,  # above the role's 1: the HPA raises it without needing metrics
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }
    kube.apply(hpa)  # accepted by the API server: autoscaling/v2 with a custom resource as its target

    def able_to_scale():
        status = (get(kube, "hpa", f"{name}-prefill") or {}).get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions") or []}
        return conds if conds.get("AbleToScale", {}).get("status") == "True" else None

    conds = wait_for(able_to_scale, "the HPA read the scaler's scale subresource", HPA_DEADLINE)
    assert conds["AbleToScale"]["reason"] in ("SucceededGetScale", "SucceededRescale", "ReadyForNewScale")
    wait_for(
        lambda: replicas(kube, f"{name}-prefill") == 2, "prefill's Deployment raised by the HPA", HPA_DEADLINE
    )
    scaler = get(kube, "igs", f"{name}-prefill")
    assert scaler["spec"]["replicas"] == 2
    assert FIELD_MANAGER not in owner_of(scaler, "spec", "replicas")  # the HPA's (the controller-manager)
    assert replicas(kube, f"{name}-decode") == 2  # the other role is untouched
    hpa_status = get(kube, "hpa", f"{name}-prefill")["status"]
    assert hpa_status["desiredReplicas"] == 2


# ---------------------------------------------------------------- the planner's decisions


@on_cluster
async def test_planner_decisions_reach_the_role_through_its_scaler(kube, operator, etcd_server):
    from inference_graph.runtime.discovery import Discovery

    name = unique("planned")
    manifest = graph_manifest(
        name, decode={"replicas": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}
    )
    manifest["spec"]["planner"] = {"policy": "load"}
    discovery = await Discovery.connect(etcd_server.endpoints)
    try:
        kube.apply(manifest)
        wait_for(lambda: get(kube, "deployment", f"{name}-planner"), "the planner's Deployment")
        wait_for(lambda: replicas(kube, f"{name}-decode") == 1, "decode at the spec's count")

        await discovery.put_replicas(name, {"decode": 3, "prefill": 5})
        wait_for(lambda: replicas(kube, f"{name}-decode") == 3, "decode at the planner's 3")
        scaler = get(kube, "igs", f"{name}-decode")
        assert scaler["spec"]["replicas"] == 3 and owner_of(scaler, "spec", "replicas") == [FIELD_MANAGER]
        assert replicas(kube, f"{name}-prefill") == 1  # prefill does not autoscale: the decision is ignored

        await discovery.put_replicas(name, {"decode": 9})
        wait_for(lambda: replicas(kube, f"{name}-decode") == 4, "decode at maxReplicas")

        # the planner owns an autoscaled role's scale: a kubectl scale of it is reported and undone
        kube.kubectl("scale", "igs", f"{name}-decode", "--replicas=1")
        wait_for(
            lambda: [e for e in conflict_events(kube, name) if "planner" in e["message"]],
            "a FieldConflict event naming the planner",
        )
        wait_for(lambda: get(kube, "igs", f"{name}-decode")["spec"]["replicas"] == 4, "the scaler back at 4")
        assert replicas(kube, f"{name}-decode") == 4
    finally:
        await discovery.close()
    assert json.dumps(get(kube, "ig", name)["status"]["services"]["decode"]).count('"desired": 4') == 1
