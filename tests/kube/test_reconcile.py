"""The operator's pure reconcile core and its controller pass, with the API as plain dicts in memory."""

from __future__ import annotations

import asyncio
import copy
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inference_graph.core.spec import Role, parse_graph
from inference_graph.settings import OperatorSettings
from inference_graph_operator.config import DEFAULT_LIVENESS, OperatorConfig
from inference_graph_operator.controller import GraphController
from inference_graph_operator.handlers import controlling_graph, graph_event
from inference_graph_operator.kube import FIELD_MANAGER, ApiError
from inference_graph_operator.reconcile import (
    MISSING,
    Desired,
    Problems,
    Scale,
    Verb,
    decide_replicas,
    desired_children,
    drift,
    graph_status,
    phase_of,
    plan,
    scale_decisions,
    status_patch,
    unschedulable_roles,
)
from inference_graph_operator.render import OperatorDefaults

UID = "5f0c6a1e-0000-4000-8000-000000000001"
DEFAULTS = OperatorDefaults(image="registry.example/runtime:1")
NOW = "2026-11-23T06:00:00Z"


def graph_body(**spec_overrides) -> dict[str, Any]:
    spec = {
        "model": {"name": "m", "source": "builtin://tiny"},
        "disaggregation": {"enabled": True},
        "services": {"frontend": {"replicas": 1}, "decode": {"replicas": 2}, "prefill": {"replicas": 1}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "inferencegraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "g", "namespace": "ns", "uid": UID, "generation": 3},
        "spec": spec,
    }


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns: our fields plus defaults and server metadata."""
    stored = copy.deepcopy(obj)
    stored["metadata"].update(uid="child-uid", resourceVersion="7", creationTimestamp=NOW)
    if obj["kind"] == "Deployment":
        stored["metadata"]["generation"] = 1
    if obj["kind"] == "Service":
        stored["spec"]["clusterIP"] = "10.0.0.7"
    return with_defaults(stored)


def with_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """Defaults the API server fills in on every write."""
    if obj["kind"] == "Deployment":
        obj["spec"].setdefault("revisionHistoryLimit", 10)
        obj["spec"]["template"]["spec"]["containers"][0].setdefault(
            "terminationMessagePath", "/dev/termination-log"
        )
    return obj


def ready(deployment: dict[str, Any]) -> dict[str, Any]:
    n = deployment["spec"]["replicas"]
    return {
        **deployment,
        "status": {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        },
    }


def rendered(body=None) -> Desired:
    return desired_children(body or graph_body(), DEFAULTS)


# ---------------------------------------------------------------- plan


def test_nothing_observed_creates_every_child():
    desired = rendered()
    todo = plan(desired.children, [], UID)
    assert [(a.verb, a.why) for a in todo.actions] == [(Verb.APPLY, MISSING)] * len(desired.children)
    assert {a.key for a in todo.actions} == {
        ("ConfigMap", "g-graph"),
        ("Deployment", "g-frontend"),
        ("Deployment", "g-processor"),
        ("Deployment", "g-decode"),
        ("Deployment", "g-prefill"),
        ("Service", "g-frontend"),
        ("PodDisruptionBudget", "g-decode"),  # decode has 2 replicas; the other roles 1: none
        ("InferenceGraphScaler", "g-decode"),  # one per worker role: the role's scale
        ("InferenceGraphScaler", "g-prefill"),
    }


def test_server_defaults_and_status_are_not_drift():
    desired = rendered()
    observed = [ready(as_stored(o)) if o["kind"] == "Deployment" else as_stored(o) for o in desired.children]
    assert plan(desired.children, observed, UID).actions == []


def test_a_hand_edit_is_drift_and_is_applied_back():
    desired = rendered()
    observed = [as_stored(o) for o in desired.children]
    decode = next(o for o in observed if o["metadata"]["name"] == "g-decode" and o["kind"] == "Deployment")
    # someone else's additions are theirs (server-side apply keeps them): not drift
    decode["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": "1"})
    decode["metadata"]["labels"]["team"] = "search"
    assert plan(desired.children, observed, UID).actions == []
    decode["spec"]["replicas"] = 5  # kubectl scale of the Deployment: the operator is the single writer
    (action,) = plan(desired.children, observed, UID).actions
    assert action.verb is Verb.APPLY and action.key == ("Deployment", "g-decode")
    assert action.why == "drift at spec.replicas"
    assert action.obj["spec"]["replicas"] == 2
    env = decode["spec"]["template"]["spec"]["containers"][0]["env"]
    env[[e["name"] for e in env].index("IG_NAMESPACE")]["value"] = "hacked"  # a value we render
    (action,) = plan(desired.children, observed, UID).actions
    assert action.why == "drift at spec.replicas"
    decode["spec"]["replicas"] = 2
    (action,) = plan(desired.children, observed, UID).actions
    assert action.why == "drift at spec.template.spec.containers[name=decode].env[name=IG_NAMESPACE].value"


def test_a_deleted_child_is_created_again():
    desired = rendered()
    observed = [as_stored(o) for o in desired.children if o["kind"] != "Service"]
    (action,) = plan(desired.children, observed, UID).actions
    assert (action.verb, action.why, action.key) == (Verb.APPLY, MISSING, ("Service", "g-frontend"))


def test_a_role_removed_from_the_spec_loses_its_deployment():
    observed = [as_stored(o) for o in rendered().children]
    body = graph_body(disaggregation={"enabled": False}, services={"decode": {"replicas": 2}})
    actions = plan(rendered(body).children, observed, UID).actions
    assert {(a.verb, a.key) for a in actions if a.verb is Verb.DELETE} == {
        (Verb.DELETE, ("Deployment", "g-prefill")),
        (Verb.DELETE, ("InferenceGraphScaler", "g-prefill")),
    }


def test_objects_owned_by_someone_else_are_never_touched():
    desired = rendered()
    foreign = as_stored(desired.children[0])
    foreign["metadata"]["ownerReferences"] = []  # a ConfigMap g-graph made by hand
    stale_other_graph = as_stored(desired.children[1])
    stale_other_graph["metadata"]["ownerReferences"][0]["uid"] = "uid-of-a-deleted-graph"
    todo = plan(desired.children, [foreign, stale_other_graph], UID)
    assert todo.conflicts == ["ConfigMap g-graph", "Deployment g-frontend"]
    touched = {a.key for a in todo.actions}
    assert ("ConfigMap", "g-graph") not in touched and ("Deployment", "g-frontend") not in touched
    assert all(a.verb is Verb.APPLY for a in todo.actions)


def test_drift_compares_lists_item_by_item_and_ignores_extra_keys():
    assert drift({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 2}], "b": 3}) is None
    assert drift({"a": [{"x": 1}]}, {"a": [{"x": 1}, {"x": 2}]}) == "a"  # an atomic list: whole
    assert drift({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == "a.b[1]"
    assert drift({"a": 1}, {}) == "a"
    # lists keyed by name, as server-side apply merges them: found by key, others' items kept
    named = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert drift({"env": named}, {"env": [named[1], {"name": "C"}, named[0]]}) is None
    assert drift({"env": named}, {"env": [named[0]]}) == "env[name=B]"
    assert drift({"env": named}, {"env": [named[0], {"name": "B", "value": "3"}]}) == "env[name=B].value"


# ---------------------------------------------------------------- desired state


def test_invalid_spec_renders_nothing_and_names_the_field():
    body = graph_body(disaggregation={"enabled": False})  # prefill without disaggregation
    desired = rendered(body)
    assert desired.children == [] and desired.graph is None
    assert "services.prefill" in str(desired.error)
    assert "disaggregation.enabled" in str(desired.error)


def test_a_name_too_long_for_the_frontend_service_is_a_spec_error():
    body = graph_body()
    body["metadata"]["name"] = "g" * 54  # a valid graph name; "<name>-frontend" is 63
    assert rendered(body).error is None
    body["metadata"]["name"] = "g" * 55
    desired = rendered(body)
    assert desired.children == [] and desired.error.field == "metadata.name"
    assert "at most 54 characters" in str(desired.error)


def test_replicas_come_from_the_spec_unless_the_role_autoscales():
    graph = parse_graph({k: v for k, v in graph_body().items() if k != "status"})
    assert decide_replicas(graph) == {Role.FRONTEND: 1, Role.PROCESSOR: 1, Role.DECODE: 2, Role.PREFILL: 1}
    # no role autoscales: a planner decision changes nothing (manual replicas win)
    assert decide_replicas(graph, {Role.PREFILL: 4})[Role.PREFILL] == 1

    body = graph_body()
    body["spec"]["services"]["prefill"]["autoscaling"] = {"enabled": True, "minReplicas": 0, "maxReplicas": 3}
    body["spec"]["planner"] = {"policy": "load"}  # sla with vLLM would need a measured profile
    graph = parse_graph({k: v for k, v in body.items() if k != "status"})
    assert decide_replicas(graph)[Role.PREFILL] == 1  # before the first decision: the spec's, in bounds
    recommended = {Role.PREFILL: 9, Role.DECODE: 7, Role.ROUTER: 3}
    replicas = decide_replicas(graph, recommended)
    assert replicas[Role.PREFILL] == 3  # maxReplicas
    assert replicas[Role.DECODE] == 2  # decode does not autoscale
    assert Role.ROUTER not in replicas and replicas[Role.PLANNER] == 1
    desired = desired_children(body, DEFAULTS, lambda _graph: recommended)
    by_name = {o["metadata"]["name"]: o for o in desired.children if o["kind"] == "Deployment"}
    assert by_name["g-prefill"]["spec"]["replicas"] == 3
    planner_env = {
        e["name"]: e.get("value")
        for e in by_name["g-planner"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert planner_env["IG_FRONTEND_URL"] == "http://g-frontend:8000"


def scaler(role: str, replicas: int, ours: bool) -> dict[str, Any]:
    managed = (
        owned_replicas({})
        if ours
        else [{"manager": "kubectl", "operation": "Update", "subresource": "scale"}]
    )
    return {
        "spec": {"graph": "g", "role": role, "replicas": replicas},
        "metadata": {"managedFields": managed},
    }


def test_a_worker_roles_replicas_come_from_its_scaler_once_someone_else_scaled_it():
    graph = parse_graph(graph_body())
    # new scalers, or ones whose replicas the operator's apply still owns: the graph's count
    assert scale_decisions(graph, None, {}) == {Role.DECODE: Scale(2, 2), Role.PREFILL: Scale(1, 1)}
    owned = {Role.DECODE: scaler("decode", 2, ours=True)}
    assert scale_decisions(graph, None, owned)[Role.DECODE] == Scale(2, 2)
    # kubectl scale / an HPA took the field: its value stands, the graph's is not applied
    scaled = {Role.DECODE: scaler("decode", 5, ours=False)}
    assert scale_decisions(graph, None, scaled)[Role.DECODE] == Scale(5, None)
    body = graph_body()
    desired = desired_children(body, DEFAULTS)
    assert desired.yield_replicas == {
        ("InferenceGraphScaler", "g-decode"),
        ("InferenceGraphScaler", "g-prefill"),
    }

    # a role that autoscales: the planner's decision, within bounds, and it wins a conflict
    body["spec"]["services"]["decode"]["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
    body["spec"]["planner"] = {"policy": "load"}
    graph = parse_graph(body)
    assert scale_decisions(graph, {Role.DECODE: 9}, scaled)[Role.DECODE] == Scale(4, 4, planner=True)
    assert scale_decisions(graph, None, scaled)[Role.DECODE] == Scale(4, None)  # no decision yet: clamped
    assert scale_decisions(graph, None, {})[Role.DECODE] == Scale(2, 2)


def test_a_scaled_role_follows_its_scaler_and_the_deployment_keeps_one_writer():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    controller.reconcile("ns", "g")
    # kubectl scale igs/g-decode --replicas=4: the scale subresource, an Update by another manager
    decode = api.objects[("InferenceGraphScaler", "g-decode")]
    decode["spec"]["replicas"] = 4
    decode["metadata"]["managedFields"] = [
        {"manager": "kubectl", "operation": "Update", "subresource": "scale"}
    ]
    result = controller.reconcile("ns", "g")
    assert result.actions == ["apply Deployment g-decode (drift at spec.replicas)"]
    assert api.objects[("Deployment", "g-decode")]["spec"]["replicas"] == 4
    assert api.objects[("Deployment", "g-prefill")]["spec"]["replicas"] == 1
    assert api.graph["status"]["services"]["decode"]["desired"] == 4
    # the graph's replicas no longer move it; kubectl scale of the Deployment itself is undone
    api.graph["spec"]["services"]["decode"]["replicas"] = 3
    api.objects[("Deployment", "g-decode")]["spec"]["replicas"] = 7
    controller.reconcile("ns", "g")
    assert api.objects[("Deployment", "g-decode")]["spec"]["replicas"] == 4


def test_a_conflict_is_reported_then_forced_and_a_scaled_scaler_is_left_alone():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    controller.reconcile("ns", "g")
    api.objects[("Deployment", "g-decode")]["spec"]["replicas"] = 7  # kubectl scale deploy
    api.conflicts.add(("Deployment", "g-decode"))  # the server: .spec.replicas is kubectl's now
    api.writes.clear()
    result = controller.reconcile("ns", "g")
    assert api.writes[:2] == ["apply g-decode", "apply --force g-decode"]
    assert api.objects[("Deployment", "g-decode")]["spec"]["replicas"] == 2
    assert [reason for reason, _ in api.events] == ["FieldConflict"]
    assert (
        "Deployment g-decode" in api.events[0][1] and "forced back to the graph's values" in api.events[0][1]
    )
    assert result.forced and result.failures == []

    # the graph's count for a scaler conflicts: someone scaled it since the listing; theirs stands
    api.graph["spec"]["services"]["prefill"]["replicas"] = 2
    api.conflicts.add(("InferenceGraphScaler", "g-prefill"))
    api.writes.clear()
    controller.reconcile("ns", "g")
    # the Deployment, its new PodDisruptionBudget (2 replicas now), then the scaler twice: with the
    # graph's count (409), then without it; no force
    assert [w for w in api.writes if "g-prefill" in w] == ["apply g-prefill"] * 4
    assert len(api.events) == 1  # not a conflict to report: the role's scale is whoever set it last


def test_a_disruption_budget_comes_and_goes_with_a_second_replica():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    controller.reconcile("ns", "g")
    assert {name for kind, name in api.objects if kind == "PodDisruptionBudget"} == {"g-decode"}
    # kubectl scale igs/g-decode --replicas=1 (an HPA would do the same): the budget goes
    decode = api.objects[("InferenceGraphScaler", "g-decode")]
    decode["spec"]["replicas"] = 1
    decode["metadata"]["managedFields"] = [
        {"manager": "kubectl", "operation": "Update", "subresource": "scale"}
    ]
    api.graph["spec"]["services"]["prefill"]["replicas"] = 3  # and prefill gets one
    result = controller.reconcile("ns", "g")
    assert "delete PodDisruptionBudget g-decode (no longer desired)" in result.actions
    assert "apply PodDisruptionBudget g-prefill (missing)" in result.actions
    assert {name for kind, name in api.objects if kind == "PodDisruptionBudget"} == {"g-prefill"}
    # the role removed from the spec: its budget goes with its Deployment
    del api.graph["spec"]["services"]["prefill"]
    api.graph["spec"]["disaggregation"] = {"enabled": False}
    controller.reconcile("ns", "g")
    assert {kind for kind, _ in api.objects if kind == "PodDisruptionBudget"} == set()


def test_without_the_scaler_crd_the_roles_are_scaled_directly():
    api = MemoryApi(graph_body())
    api.missing_kinds.add("InferenceGraphScaler")  # a chart upgraded without kubectl apply -f crds/
    result = GraphController(api, DEFAULTS, clock=lambda: NOW).reconcile("ns", "g")
    assert len(result.actions) == 7 and result.failures == []
    assert {kind for kind, _ in api.objects} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert api.objects[("Deployment", "g-decode")]["spec"]["replicas"] == 2


# ---------------------------------------------------------------- status


def status_for(children, problems=None, changed=False, body=None):
    body = body or graph_body()
    return graph_status(body, rendered(body), children, problems or Problems(), changed, NOW)


def test_status_when_everything_is_ready():
    children = [ready(as_stored(o)) if o["kind"] == "Deployment" else o for o in rendered().children]
    status = status_for(children)
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == 3
    assert status["ready"] == "5/5"
    assert status["services"]["decode"] == {"desired": 2, "replicas": 2, "ready": 2}
    assert status["endpoint"] == "http://g-frontend.ns.svc:8000"
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True", "AllRolesReady")
    assert (conds["Progressing"]["status"], conds["Degraded"]["status"]) == ("False", "False")
    assert all(c["lastTransitionTime"] == NOW for c in conds.values())


def test_status_while_pods_start():
    children = [as_stored(o) for o in rendered().children]  # Deployments without status yet
    status = status_for(children, changed=True)
    assert status["phase"] == "Progressing"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "RolesNotReady"
    assert "decode 0/2" in conds["Ready"]["message"]
    assert conds["Progressing"]["reason"] == "RollingOut"
    assert "g-decode: the new spec is not yet picked up" in conds["Progressing"]["message"]
    for child in children:  # the Deployment controller saw the spec; pods are coming
        if child["kind"] == "Deployment":
            child["status"] = {"observedGeneration": 1, "updatedReplicas": 0}
    progressing = status_for(children)["conditions"][1]
    assert progressing["status"] == "True" and "g-decode: 0/2 pods updated" in progressing["message"]


def test_invalid_spec_status_names_the_field_and_keeps_what_runs():
    children = [ready(as_stored(o)) if o["kind"] == "Deployment" else o for o in rendered().children]
    body = graph_body(disaggregation={"enabled": False})
    desired = rendered(body)
    status = graph_status(body, desired, children, Problems(spec_error=desired.error), False, NOW)
    assert status["phase"] == "Failed"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "InvalidSpec"
    assert "services.prefill" in conds["Degraded"]["message"]
    assert "nothing was created or changed" in conds["Degraded"]["message"]
    assert status["services"]["decode"] == {"desired": 2, "replicas": 2, "ready": 2}  # still running


@pytest.mark.parametrize(
    ("problems", "reason"),
    [
        (Problems(conflicts=["ConfigMap g-graph"]), "ChildConflict"),
        (Problems(failures=["create Deployment g-decode: 403 forbidden"]), "ApplyFailed"),
        (Problems(unschedulable={"decode": "0/4 nodes are available"}), "Unschedulable"),
    ],
)
def test_degraded_reasons(problems, reason):
    children = [ready(as_stored(o)) if o["kind"] == "Deployment" else o for o in rendered().children]
    status = status_for(children, problems)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", reason)
    assert status["phase"] == "Degraded"


def test_unschedulable_pods_are_named_by_role_in_the_schedulers_words():
    def pod(role: str, scheduled: str, reason: str | None = None, message: str = "") -> dict:
        cond = {"type": "PodScheduled", "status": scheduled, "reason": reason, "message": message}
        labels = {"app.kubernetes.io/component": role}
        return {"metadata": {"labels": labels}, "status": {"conditions": [cond]}}

    full = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    pods = [pod("prefill", "True"), pod("decode", "False", "Unschedulable", full), pod("router", "False")]
    # router's pod is not placed for another reason (SchedulingGated): not the scheduler giving up
    assert unschedulable_roles(pods) == {"decode": full}
    status = status_for([], Problems(unschedulable={"decode": full}))
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == f"decode: pods cannot be scheduled: {full}"


def test_a_stuck_rollout_is_degraded():
    children = [as_stored(o) for o in rendered().children]
    decode = next(c for c in children if c["metadata"]["name"] == "g-decode")
    decode["status"] = {
        "conditions": [
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "timed out",
            }
        ]
    }
    degraded = next(c for c in status_for(children)["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "RolloutFailed" and "g-decode: timed out" in degraded["message"]


def test_transition_times_survive_while_a_condition_holds():
    children = [ready(as_stored(o)) if o["kind"] == "Deployment" else o for o in rendered().children]
    body = graph_body()
    body["status"] = status_for(children)
    later = graph_status(body, rendered(body), children, Problems(), False, "2026-11-23T07:00:00Z")
    assert [c["lastTransitionTime"] for c in later["conditions"]] == [NOW] * 3
    assert status_patch(body["status"], later) is None  # nothing to write


def test_status_patch_removes_roles_that_went_away():
    old = {"services": {"decode": {"desired": 1}, "prefill": {"desired": 1}}, "endpoint": "http://x"}
    new = {"services": {"decode": {"desired": 1}}}
    assert status_patch(old, new) == {
        "services": {"prefill": None, "decode": {"desired": 1}},
        "endpoint": None,
    }


def test_phase_order():
    def conds(ready, progressing, degraded, reason="X"):
        return [
            {"type": "Ready", "status": ready, "reason": "R"},
            {"type": "Progressing", "status": progressing, "reason": "P"},
            {"type": "Degraded", "status": degraded, "reason": reason},
        ]

    assert phase_of(conds("True", "False", "False")) == "Ready"
    assert phase_of(conds("True", "True", "False")) == "Progressing"
    assert phase_of(conds("False", "False", "False")) == "Pending"
    assert phase_of(conds("True", "False", "True")) == "Degraded"
    assert phase_of(conds("False", "False", "True", "InvalidSpec")) == "Failed"


# ---------------------------------------------------------------- one controller pass, API in memory


def merge_apply(target: Any, applied: Any) -> Any:
    """Roughly server-side apply's merge: maps merge key by key, lists of named items by name,
    other lists are replaced (field removal and ownership are not modelled)."""
    if isinstance(applied, dict) and isinstance(target, dict):
        out = copy.deepcopy(target)
        for key, value in applied.items():
            out[key] = merge_apply(out.get(key), value)
        return out
    if (
        isinstance(applied, list)
        and isinstance(target, list)
        and applied
        and all("name" in i for i in applied)
    ):
        by_name = {i.get("name"): i for i in target if isinstance(i, dict)}
        merged = [merge_apply(by_name.pop(i["name"], None), i) for i in applied]
        return merged + [i for i in target if isinstance(i, dict) and i.get("name") in by_name]
    return copy.deepcopy(applied)


def owned_replicas(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """managedFields saying the operator's apply owns spec.replicas (what scale_decisions reads)."""
    return [{"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]


class MemoryApi:
    """The KubeApi interface over a dict, with the API server's 404 and apply-conflict (409) answers."""

    def __init__(self, graph: dict[str, Any], normalize=lambda obj: obj):
        self.missing_kinds: set[str] = set()
        self.graph = graph
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.normalize = normalize  # how the server stores what it is sent
        self.conflicts: set[tuple[str, str]] = set()  # (kind, name): another manager's spec.replicas

    def get_graph(self, namespace, name):
        return copy.deepcopy(self.graph) if self.graph else None

    def list_graphs(self, namespace):
        return [("ns", self.graph["metadata"]["name"])] if self.graph else []

    def list_children(self, namespace, selector):
        instance = selector.split(",")[0].split("=")[1]
        return [
            copy.deepcopy(o)
            for o in self.objects.values()
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == instance
        ]

    def get(self, kind, namespace, name):
        return copy.deepcopy(self.objects.get((kind, name)))

    def list_pods(self, namespace, selector):
        return []

    def apply(self, obj, force=False):
        key = (obj["kind"], obj["metadata"]["name"])
        self.writes.append(f"apply{' --force' if force else ''} {key[1]}")
        if key in self.conflicts and not force and "replicas" in obj.get("spec", {}):
            raise ApiError(409, 'Apply failed with 1 conflict: conflict with "someone": .spec.replicas')
        self.conflicts.discard(key)
        old = self.objects.get(key)
        if old is None:
            new = self.normalize(as_stored(obj))
        else:
            new = self.normalize(with_defaults(merge_apply(old, obj)))
        if key[0] == "InferenceGraphScaler" and "replicas" in obj["spec"]:
            new["metadata"]["managedFields"] = owned_replicas(obj)
        if old is not None and new != old:  # the API server bumps resourceVersion only when something changed
            new["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        self.objects[key] = new
        return copy.deepcopy(new)

    def apply_status(self, obj):
        key = (obj["kind"], obj["metadata"]["name"])
        self.writes.append(f"scaler-status {key[1]}")
        self.objects[key] = {**self.objects[key], "status": copy.deepcopy(obj["status"])}
        return copy.deepcopy(self.objects[key])

    def event(self, graph, reason, message):
        self.events.append((reason, message))

    def delete(self, obj):
        self.writes.append(f"delete {obj['metadata']['name']}")
        self.objects.pop((obj["kind"], obj["metadata"]["name"]), None)

    def patch_graph_status(self, namespace, name, status):
        self.writes.append("status")
        self.graph["status"] = {**(self.graph.get("status") or {}), **status}


def test_a_pass_creates_then_a_second_pass_writes_nothing():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    first = controller.reconcile("ns", "g")
    assert len(first.actions) == 9 and first.failures == []
    assert all(w.startswith(("apply g-", "scaler-status g-", "status")) for w in api.writes)  # no force
    assert api.graph["status"]["phase"] == "Progressing"
    selector = "app.kubernetes.io/component=decode,app.kubernetes.io/instance=g,app.kubernetes.io/name=inference-graph"
    assert api.objects[("InferenceGraphScaler", "g-decode")]["status"] == {
        "replicas": 0,
        "readyReplicas": 0,
        "selector": selector,
    }
    assert api.objects[("InferenceGraphScaler", "g-decode")]["spec"] == {
        "graph": "g",
        "role": "decode",
        "replicas": 2,
    }
    api.writes.clear()
    second = controller.reconcile("ns", "g")
    assert second.actions == [] and api.writes == []  # same children, same status: no write
    for key, obj in api.objects.items():  # the Deployment controller brings the pods up
        if key[0] == "Deployment":
            api.objects[key] = ready(obj)
    controller.reconcile("ns", "g")
    assert api.writes == ["scaler-status g-decode", "scaler-status g-prefill", "status"]
    assert api.objects[("InferenceGraphScaler", "g-decode")]["status"]["readyReplicas"] == 2
    assert api.graph["status"]["phase"] == "Ready"


def test_a_pass_reports_a_foreign_object_and_leaves_it_alone():
    api = MemoryApi(graph_body())
    api.objects[("ConfigMap", "g-graph")] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "g-graph", "namespace": "ns"},  # no labels: not listed, found on 409
        "data": {"mine": "yes"},
    }
    result = GraphController(api, DEFAULTS, clock=lambda: NOW).reconcile("ns", "g")
    assert api.objects[("ConfigMap", "g-graph")]["data"] == {"mine": "yes"}
    assert not [w for w in api.writes if w.endswith(" g-graph")]
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ChildConflict" and "ConfigMap g-graph" in degraded["message"]


def test_a_pass_on_an_invalid_spec_changes_no_child():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    controller.reconcile("ns", "g")
    before = copy.deepcopy(api.objects)
    api.graph["spec"]["disaggregation"] = {"enabled": False}
    api.writes.clear()
    controller.reconcile("ns", "g")
    assert api.objects == before and api.writes == ["status"]
    assert api.graph["status"]["phase"] == "Failed"


def test_a_pass_on_a_deleted_graph_does_nothing():
    api = MemoryApi(None)
    assert GraphController(api, DEFAULTS).reconcile("ns", "g").gone
    assert api.writes == []


async def test_requests_during_a_pass_collapse_into_one_more_pass():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    passes = []
    original = controller.reconcile

    def counting(namespace, name):
        passes.append(name)
        return original(namespace, name)

    controller.reconcile = counting
    await asyncio.gather(*(controller.request("ns", "g") for _ in range(6)))
    assert 1 <= len(passes) <= 2


# ---------------------------------------------------------------- process settings and kopf glue


def test_operator_config_from_env_and_flags():
    env = {"IG_WATCH_NAMESPACE": "serving", "IG_RESYNC_SECONDS": "15", "IG_RUNTIME_IMAGE": "r/i:2"}
    config = OperatorConfig.load([], env)
    assert (config.namespace, config.resync_seconds, config.liveness) == ("serving", 15.0, DEFAULT_LIVENESS)
    assert config.defaults.image == "r/i:2"
    flags = OperatorConfig.load(["--namespace", "", "--liveness", "", "--log-level", "debug"], env)
    assert (flags.namespace, flags.liveness, flags.log_level) == ("", "", "DEBUG")
    with pytest.raises(SystemExit):
        OperatorConfig.load(["--resync-seconds", "0"], {})


def test_every_setting_the_chart_passes_is_read_by_the_operator():
    template = (Path(__file__).parents[2] / "charts/dynamo/templates/operator.yaml").read_text()
    passed = set(re.findall(r"- name: ([A-Z][A-Z0-9_]+)", template))
    read = set(OperatorSettings.names())
    assert passed and passed <= read, passed - read


def test_a_child_event_finds_its_graph_by_the_controller_reference():
    child = rendered().children[1]
    assert controlling_graph(child) == "g"
    child["metadata"]["ownerReferences"][0]["controller"] = False
    assert controlling_graph(child) is None
    assert controlling_graph({"metadata": {}}) is None


def test_a_patch_the_server_normalizes_away_is_not_progress():
    def canonical_cpu(obj):  # the API server stores the quantity 0.5 as 500m
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            requests = c.get("resources", {}).get("requests", {})
            if requests.get("cpu") == "0.5":
                requests["cpu"] = "500m"
        return obj

    body = graph_body()
    body["spec"]["services"]["processor"] = {"resources": {"requests": {"cpu": "0.5"}}}
    api = MemoryApi(body, normalize=canonical_cpu)
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    controller.reconcile("ns", "g")
    for key, obj in api.objects.items():
        if key[0] == "Deployment":
            api.objects[key] = ready(obj)
    result = controller.reconcile("ns", "g")
    assert "apply g-processor" in api.writes  # the drift check cannot tell 0.5 from 500m ...
    assert result.actions == [] and not result.changed  # ... but the unchanged resourceVersion can
    assert api.graph["status"]["phase"] == "Ready"


async def test_graph_events_skip_a_generation_already_reconciled():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    memo = SimpleNamespace(controller=controller)
    passes = []
    original = controller.reconcile
    controller.reconcile = lambda ns, name: passes.append(name) or original(ns, name)

    await graph_event(body=api.graph, type="ADDED", memo=memo)
    await graph_event(body=api.graph, type="MODIFIED", memo=memo)  # our own status write
    assert passes == ["g"]
    api.graph["metadata"]["generation"] = 4  # a spec change
    await graph_event(body=api.graph, type="MODIFIED", memo=memo)
    assert passes == ["g", "g"]
    await graph_event(body=api.graph, type="DELETED", memo=memo)
    recreated = {**api.graph, "metadata": {**api.graph["metadata"], "uid": "new-uid", "generation": 1}}
    api.graph = recreated
    await graph_event(body=recreated, type="ADDED", memo=memo)  # same name, new object
    assert passes == ["g", "g", "g"]


async def test_the_resync_passes_over_every_graph_periodically():
    api = MemoryApi(graph_body())
    controller = GraphController(api, DEFAULTS, clock=lambda: NOW)
    loop = asyncio.get_running_loop()
    passed = asyncio.Event()
    original = controller.reconcile

    def signalling(namespace, name):  # runs in a thread: hand the signal to the loop
        result = original(namespace, name)
        loop.call_soon_threadsafe(passed.set)
        return result

    async def after_passes_until(condition) -> None:
        while not condition():  # re-checked after every pass; wait_for below is the deadline
            passed.clear()
            await passed.wait()

    controller.reconcile = signalling
    task = asyncio.create_task(controller.resync_forever("", interval=0.01))
    try:
        # no event comes: the resync creates the children, and brings back a deleted one
        await asyncio.wait_for(after_passes_until(lambda: len(api.objects) == 9), 10)
        api.objects.pop(("Service", "g-frontend"))
        await asyncio.wait_for(after_passes_until(lambda: ("Service", "g-frontend") in api.objects), 10)
    finally:
        task.cancel()
