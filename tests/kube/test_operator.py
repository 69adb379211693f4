"""The real operator (``python -m inference_graph_operator``: kopf + the official client) on the session
cluster, run out of the cluster with the identity of the chart's ServiceAccount: the chart is installed
(``helm install``) in the test's namespace and the operator gets a kubeconfig with a TokenRequest token of
that account, so the real authorizer grants it exactly the chart's RBAC (a missing rule fails the test).
Driven with the pinned kubectl: create with pods scheduled on the fake GPU nodes and made Ready by kwok,
spec update, drift repair, delete with the real garbage collector, invalid spec, operator restart.
Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from inference_graph_operator.render import SPEC_HASH_ANNOTATION
from support import eventually_sync

from .common import CONFIGS, ROOT, WIDE_HEADER
from .operator_process import Operator

CHART = ROOT / "charts" / "dynamo"
SELECTOR = "app.kubernetes.io/managed-by=inference-graph-operator"
DEADLINE = 30.0  # seconds; a loaded 2-core machine runs several test sessions at once
T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """``eventually_sync`` with this module's deadline (31 call sites name ``what`` positionally)."""
    return eventually_sync(check, timeout=timeout, interval=0.05, what=what)


def install_operator(kube, etcd_endpoints: list[str], cluster_wide: bool) -> tuple[str, dict[str, str]]:
    """``helm install`` the chart for its ServiceAccount and RBAC (Role, or ClusterRole when cluster-wide)
    with the session's etcd as the external one; returns the release and the operator container's env."""
    release = f"op-{secrets.token_hex(3)}" if cluster_wide else "op"  # ClusterRoles are the session's
    kube.helm(
        "install", release, str(CHART),
        "--set", f"operator.watchNamespaceOnly={str(not cluster_wide).lower()}",
        "--set", "nats.enabled=false", "--set", "nats.externalUrl=nats://nats.invalid:4222",
        "--set", "etcd.enabled=false", "--set", f"etcd.externalEndpoints={{{','.join(etcd_endpoints)}}}",
        "--set", "runtime.image.repository=registry.example/runtime", "--set", "runtime.image.tag=test",
    )  # fmt: skip
    deployment = kube.json("get", "deployment", f"{release}-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return release, {e["name"]: e.get("value", "") for e in container["env"]}  # "" is not stored


@pytest.fixture
def kube(kube, crd):
    return kube


def start_operator(kube, tmp_path: Path, etcd_server, cluster_wide: bool = False) -> Iterator[Operator]:
    release, env = install_operator(kube, etcd_server.endpoints, cluster_wide)
    identity = kube.service_account_kubeconfig(f"{release}-operator")
    op = Operator(identity, tmp_path / "operator.log", env).start()
    try:
        yield op
    finally:
        op.stop()
        if cluster_wide:  # its ClusterRole and ClusterRoleBinding outlive the namespace
            kube.helm("uninstall", release, "--wait=hookOnly", check=False)
        print(op.log()[-6000:])  # shown by pytest only when the test fails


@pytest.fixture
def operator(kube, tmp_path, etcd_server) -> Iterator[Operator]:
    """The operator watching the test's namespace only, with the chart's Role."""
    yield from start_operator(kube, tmp_path, etcd_server)


@pytest.fixture
def cluster_wide_operator(kube, tmp_path, etcd_server) -> Iterator[Operator]:
    """The operator watching every namespace, with the chart's ClusterRole (the chart's default)."""
    yield from start_operator(kube, tmp_path, etcd_server, cluster_wide=True)


# ---------------------------------------------------------------- reading the cluster


def graph(kube, name: str) -> dict | None:
    return kube.get(f"/apis/inferencegraph.dev/v1alpha1/namespaces/{kube.namespace}/inferencegraphs/{name}")


def children(kube, graph_name: str) -> dict[tuple[str, str], dict]:
    out = {}
    for kind, path in (
        ("ConfigMap", "/api/v1/namespaces/{ns}/configmaps"),
        ("Service", "/api/v1/namespaces/{ns}/services"),
        ("Deployment", "/apis/apps/v1/namespaces/{ns}/deployments"),
    ):
        listing = kube.get(f"{path.format(ns=kube.namespace)}?labelSelector={SELECTOR}") or {"items": []}
        for item in listing["items"]:
            if item["metadata"]["labels"].get("app.kubernetes.io/instance") == graph_name:
                out[(kind, item["metadata"]["name"])] = item
    return out


def deployment(kube, name: str) -> dict | None:
    return kube.get(f"/apis/apps/v1/namespaces/{kube.namespace}/deployments/{name}")


def condition(ig: dict | None, kind: str) -> dict:
    return next(
        (c for c in ((ig or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {}
    )


def manifest_of(path: Path) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "InferenceGraph")


def expected_children(manifest: dict) -> set[tuple[str, str]]:
    name = manifest["metadata"]["name"]
    roles = [role for role, entry in manifest["spec"]["services"].items() if entry is not None]
    return {
        ("ConfigMap", f"{name}-graph"),
        ("Service", f"{name}-frontend"),
        *(("Deployment", f"{name}-{role}") for role in ["frontend", "processor", *roles]),
    }


DISAGG = {
    "apiVersion": "inferencegraph.dev/v1alpha1",
    "kind": "InferenceGraph",
    "metadata": {"name": "pd"},
    "spec": {
        "model": {"name": "tiny", "source": "builtin://tiny"},
        "engine": {"type": "mocker"},
        "disaggregation": {"enabled": True},
        "services": {"decode": {"replicas": 2}, "prefill": {"replicas": 1}},
    },
}


def apply(kube, manifest: dict) -> None:
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def converged(kube, name: str, want: set[tuple[str, str]]) -> Callable[[], dict | None]:
    """The graph's children are exactly ``want`` and its status describes its current generation."""

    def check() -> dict | None:
        ig = graph(kube, name)
        status = (ig or {}).get("status") or {}
        if ig is None or status.get("observedGeneration") != ig["metadata"]["generation"]:
            return None
        return ig if set(children(kube, name)) == want else None

    return check


# ---------------------------------------------------------------- create


def pods_by_role(kube, name: str) -> dict[str, list[dict]]:
    """The graph's pods by role (the component label), each with its ReplicaSet owner checked."""
    listing = kube.get(
        f"/api/v1/namespaces/{kube.namespace}/pods?labelSelector=app.kubernetes.io/instance={name}"
    )
    out: dict[str, list[dict]] = {}
    for pod in listing["items"]:
        out.setdefault(pod["metadata"]["labels"]["app.kubernetes.io/component"], []).append(pod)
    return out


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def test_create_every_config_children_pods_status_and_printer_columns(kube, cluster_wide_operator):
    """The chart's default (cluster-wide, ClusterRole): each config's roles become Deployment → ReplicaSet
    → Pods that kube-scheduler places on the fake GPU nodes and kwok makes Ready; the graph turns Ready."""
    manifests = [manifest_of(path) for path in CONFIGS]
    kube.kubectl("apply", *(arg for path in CONFIGS for arg in ("-f", str(path))))
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        want = expected_children(manifest)
        ig = wait_for(converged(kube, name, want), f"{name}'s children and status")
        uid = ig["metadata"]["uid"]
        for (kind, child), obj in children(kube, name).items():
            (ref,) = obj["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                "InferenceGraph",
                name,
                uid,
                True,
            ), (
                kind,
                child,
            )
        status = ig["status"]
        annotations = ig["metadata"].get("annotations") or {}
        assert not [k for k in annotations if "kopf" in k or k.startswith("inferencegraph.dev/")]
        assert not ig["metadata"].get("finalizers")  # kopf keeps no state on the graph
        assert status["endpoint"] == f"http://{name}-frontend.{kube.namespace}.svc:8000"

    for manifest in manifests:
        name = manifest["metadata"]["name"]
        ig = wait_for(
            lambda name=name: graph(kube, name)["status"]["phase"] == "Ready" and graph(kube, name),
            f"{name} Ready",
        )
        total = sum(s["desired"] for s in ig["status"]["services"].values())
        assert ig["status"]["ready"] == f"{total}/{total}"
        assert condition(ig, "Ready")["reason"] == "AllRolesReady"
        assert condition(ig, "Progressing")["status"] == condition(ig, "Degraded")["status"] == "False"
        pods = pods_by_role(kube, name)
        roles = {role for role, entry in manifest["spec"]["services"].items() if entry is not None}
        assert set(pods) == {"frontend", "processor", *roles}
        for role, role_pods in pods.items():
            spec = manifest["spec"]["services"].get(role) or {}
            assert len(role_pods) == spec.get("replicas", 1), role
            for pod in role_pods:
                (owner,) = pod["metadata"]["ownerReferences"]
                assert owner["kind"] == "ReplicaSet" and owner["name"].startswith(f"{name}-{role}-")
                assert pod["spec"]["nodeName"].startswith("gpu-node-") and is_ready(pod), pod["metadata"][
                    "name"
                ]
                gpus = pod["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu")
                want = str(spec.get("tensorParallelSize", 1)) if role in ("decode", "prefill") else None
                assert gpus == want, (role, gpus)

    table = kube.kubectl("get", "ig").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        total = sum(s["desired"] for s in graph(kube, name)["status"]["services"].values())
        assert rows[name][1:4] == [
            "Ready",
            f"{total}/{total}",
            f"http://{name}-frontend.{kube.namespace}.svc:8000",
        ]
    wide = kube.kubectl("get", "ig", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == WIDE_HEADER


def test_a_role_no_node_can_hold_stays_pending_and_the_status_says_why(kube, operator):
    """tensorParallelSize 16 on 8-GPU nodes: kube-scheduler leaves decode's pod Pending (Unschedulable) and
    the graph's Degraded condition names the role and the scheduler's reason; the other roles run."""
    big = json.loads(json.dumps(DISAGG))
    big["spec"]["engine"] = {"type": "vllm"}  # GPU requests (the mocker asks for none)
    big["spec"]["services"]["decode"] = {"replicas": 1, "tensorParallelSize": 16}
    apply(kube, big)

    def degraded() -> dict | None:
        ig = graph(kube, "pd")
        return ig if condition(ig, "Degraded").get("reason") == "Unschedulable" else None

    ig = wait_for(degraded, "the Unschedulable condition")
    message = condition(ig, "Degraded")["message"]
    assert message.startswith("decode: pods cannot be scheduled: "), message
    assert "Insufficient nvidia.com/gpu" in message, message
    assert ig["status"]["phase"] == "Degraded"
    assert condition(ig, "Ready")["status"] == "False"
    (pod,) = pods_by_role(kube, "pd")["decode"]
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    wait_for(
        lambda: all(is_ready(p) for p in pods_by_role(kube, "pd")["prefill"]), "prefill placed and Ready"
    )

    big["spec"]["services"]["decode"]["tensorParallelSize"] = 8  # fits a node: the condition clears
    apply(kube, big)
    wait_for(lambda: graph(kube, "pd")["status"]["phase"] == "Ready", "pd Ready after the fix")
    assert condition(graph(kube, "pd"), "Degraded")["reason"] == "AsExpected"


# ---------------------------------------------------------------- spec update


def test_spec_update_rolls_only_the_affected_role(kube, operator):
    apply(kube, DISAGG)
    want = expected_children(DISAGG)
    wait_for(converged(kube, "pd", want), "pd created")
    before = children(kube, "pd")

    changed = json.loads(json.dumps(DISAGG))
    changed["spec"]["services"]["prefill"]["env"] = {"EXTRA": "1"}
    changed["spec"]["services"]["decode"]["replicas"] = 3
    apply(kube, changed)

    def rolled() -> dict | None:
        prefill = deployment(kube, "pd-prefill")
        decode = deployment(kube, "pd-decode")
        ok = prefill["metadata"]["generation"] > 1 and decode["spec"]["replicas"] == 3
        return children(kube, "pd") if ok else None

    after = wait_for(rolled, "prefill's new template and decode's new replica count")
    wait_for(converged(kube, "pd", want), "status of generation 2")

    def template(objs, name):
        return objs[("Deployment", name)]["spec"]["template"]

    assert template(before, "pd-prefill") != template(after, "pd-prefill")  # a rollout of prefill
    env = template(after, "pd-prefill")["spec"]["containers"][0]["env"]
    assert {"name": "EXTRA", "value": "1"} in env
    # decode scaled without a rollout: same pod template, same hash
    assert template(after, "pd-decode") == template(before, "pd-decode")
    for role in ("frontend", "processor"):  # untouched roles: not even written
        assert (
            after[("Deployment", f"pd-{role}")]["metadata"]["resourceVersion"]
            == (before[("Deployment", f"pd-{role}")]["metadata"]["resourceVersion"])
        )
    hashes = {
        name: template(after, name)["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for name in ("pd-decode", "pd-prefill")
    }
    assert (
        hashes["pd-decode"] == template(before, "pd-decode")["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    )
    assert graph(kube, "pd")["status"]["services"]["decode"]["desired"] == 3


def test_a_removed_role_loses_its_deployment(kube, operator):
    apply(kube, DISAGG)
    wait_for(converged(kube, "pd", expected_children(DISAGG)), "pd created")
    aggregated = json.loads(json.dumps(DISAGG))
    aggregated["spec"]["disaggregation"]["enabled"] = False
    del aggregated["spec"]["services"]["prefill"]
    kube.kubectl("replace", "-f", "-", input=yaml.safe_dump(aggregated))
    ig = wait_for(converged(kube, "pd", expected_children(aggregated)), "pd-prefill deleted")
    assert "prefill" not in ig["status"]["services"]


# ---------------------------------------------------------------- drift repair


def test_hand_edits_and_deletions_of_children_are_undone(kube, operator):
    apply(kube, DISAGG)
    want = expected_children(DISAGG)
    wait_for(converged(kube, "pd", want), "pd created")
    before = children(kube, "pd")

    kube.kubectl("scale", "deployment", "pd-decode", "--replicas=5")
    wait_for(lambda: deployment(kube, "pd-decode")["spec"]["replicas"] == 2, "decode scaled back to 2")

    # a value the operator renders is forced back; a variable added by hand is the user's field, which
    # server-side apply keeps (docs/kubernetes.md, "Server-side apply")
    kube.kubectl("set", "env", "deployment/pd-prefill", "HACK=1", "IG_NAMESPACE=hacked")

    def prefill_env() -> dict:
        containers = deployment(kube, "pd-prefill")["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in containers[0]["env"]}

    wait_for(lambda: prefill_env()["IG_NAMESPACE"] == "pd", "prefill env restored")
    assert prefill_env()["HACK"] == "1"

    kube.kubectl("delete", "deployment", "pd-frontend")
    kube.kubectl("delete", "configmap", "pd-graph")
    kube.kubectl("delete", "service", "pd-frontend")
    recreated = [("Deployment", "pd-frontend"), ("ConfigMap", "pd-graph"), ("Service", "pd-frontend")]

    def all_back() -> dict | None:
        objs = children(kube, "pd")
        new = set(objs) == want and all(
            objs[k]["metadata"]["uid"] != before[k]["metadata"]["uid"] for k in recreated
        )
        return objs if new else None

    after = wait_for(all_back, "deleted children created again")
    assert after[("ConfigMap", "pd-graph")]["data"] == before[("ConfigMap", "pd-graph")]["data"]
    assert (
        after[("Deployment", "pd-decode")]["metadata"]["uid"]
        == before[("Deployment", "pd-decode")]["metadata"]["uid"]
    )


# ---------------------------------------------------------------- delete


def test_deleting_the_graph_garbage_collects_its_children(kube, operator):
    apply(kube, DISAGG)
    wait_for(converged(kube, "pd", expected_children(DISAGG)), "pd created")
    kube.kubectl("delete", "ig", "pd", "--wait=true")
    wait_for(lambda: not children(kube, "pd"), "children garbage-collected")
    assert graph(kube, "pd") is None
    assert "Traceback" not in operator.log()


def test_finalizers_hold_the_graph_and_foreground_deletion_takes_the_children_first(kube, operator):
    """A user's finalizer keeps a deleted graph, and its children, until removed; the operator leaves a
    graph being deleted alone (no recreation). Foreground deletion: the garbage collector deletes the
    children (blockOwnerDeletion) before the graph."""
    held = {**DISAGG, "metadata": {"name": "pd", "finalizers": ["example.com/hold"]}}
    apply(kube, held)
    want = expected_children(DISAGG)
    wait_for(converged(kube, "pd", want), "pd created")
    kube.kubectl("delete", "ig", "pd", "--wait=false")
    assert graph(kube, "pd")["metadata"]["deletionTimestamp"]
    kube.kubectl("delete", "deployment", "pd-frontend")  # no pass recreates it: the graph is going
    kube.kubectl("get", "ig", "pd")  # still there, held by the finalizer
    assert set(children(kube, "pd")) == want - {("Deployment", "pd-frontend")}
    kube.kubectl(
        "patch", "ig", "pd", "--type=json", "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]'
    )
    # 60 s: the garbage collector finds a new CRD by re-reading discovery every 30 s; until then it learns
    # that an InferenceGraph owner is gone only then (a run of this test alone, right after `crd`).
    gone = lambda: graph(kube, "pd") is None and not children(kube, "pd")  # noqa: E731
    wait_for(gone, "graph and children gone", timeout=60)

    apply(kube, {**DISAGG, "metadata": {"name": "fg"}})
    wait_for(converged(kube, "fg", expected_children({**DISAGG, "metadata": {"name": "fg"}})), "fg created")
    kube.kubectl("delete", "ig", "fg", "--cascade=foreground", "--wait=false")
    seen = wait_for(lambda: graph(kube, "fg"), "fg in foreground deletion")
    assert "foregroundDeletion" in seen["metadata"]["finalizers"]
    wait_for(lambda: graph(kube, "fg") is None, "fg gone after its children")
    assert children(kube, "fg") == {}


# ---------------------------------------------------------------- invalid spec


def test_invalid_spec_names_the_field_and_creates_nothing(kube, operator):
    """What no schema catches (a graph name too long for the frontend Service the operator names after it)
    is a status condition naming the field, and nothing is created. What the CRD's rules catch (prefill
    without disaggregation, a CEL rule) never reaches the operator: the server refuses the update, naming
    the field, and what runs is unchanged."""
    name = "n" * 60  # a valid object name; "<name>-frontend" is not a valid Service name
    apply(kube, {**DISAGG, "metadata": {"name": name}})
    ig = wait_for(lambda: (g := graph(kube, name)) and (g.get("status") or {}).get("phase") and g, "status")
    degraded = condition(ig, "Degraded")
    assert ig["status"]["phase"] == "Failed"
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "metadata.name" in degraded["message"] and "63" in degraded["message"]
    assert children(kube, name) == {}
    assert kube.kubectl("get", "ig", name).stdout.splitlines()[1].split()[1] == "Failed"

    apply(kube, DISAGG)
    wait_for(converged(kube, "pd", expected_children(DISAGG)), "pd created")
    running = children(kube, "pd")
    invalid = json.loads(json.dumps(DISAGG))
    invalid["spec"]["disaggregation"]["enabled"] = False
    invalid["spec"]["services"]["decode"]["replicas"] = 9
    refused = kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(invalid), check=False)
    assert "spec.services.prefill: Invalid value" in refused.stderr, refused.stderr
    assert graph(kube, "pd")["metadata"]["generation"] == 1
    assert {k: v["metadata"]["resourceVersion"] for k, v in children(kube, "pd").items()} == {
        k: v["metadata"]["resourceVersion"] for k, v in running.items()
    }


# ---------------------------------------------------------------- restart


def test_an_operator_killed_mid_pass_converges_when_restarted(kube, operator):
    """SIGKILL as soon as the first child of a new graph exists (mid-pass, or just after): the next
    operator finishes the work, adopting what exists (same uids), with no duplicates."""
    apply(kube, DISAGG)
    first = wait_for(lambda: children(kube, "pd"), "a first child")
    operator.kill()
    operator.start()
    want = expected_children(DISAGG)
    wait_for(converged(kube, "pd", want), "pd converged after the kill")
    after = children(kube, "pd")
    for key, obj in first.items():
        assert after[key]["metadata"]["uid"] == obj["metadata"]["uid"], key
    listed = kube.get(f"/apis/apps/v1/namespaces/{kube.namespace}/deployments?labelSelector={SELECTOR}")
    assert len(listed["items"]) == len([k for k in want if k[0] == "Deployment"])


def test_operator_restart_converges_without_duplicates(kube, operator):
    apply(kube, DISAGG)
    want = expected_children(DISAGG)
    wait_for(converged(kube, "pd", want), "pd created")
    before = children(kube, "pd")

    operator.stop()
    kube.kubectl("delete", "deployment", "pd-prefill")  # while nobody watches
    scaled = json.loads(json.dumps(DISAGG))
    scaled["spec"]["services"]["decode"]["replicas"] = 4
    apply(kube, scaled)
    other = {**DISAGG, "metadata": {"name": "second"}}
    apply(kube, other)
    operator.start()

    wait_for(converged(kube, "pd", want), "pd converged after the restart")
    wait_for(converged(kube, "second", expected_children(other)), "a graph made while down is created")
    after = children(kube, "pd")
    assert deployment(kube, "pd-decode")["spec"]["replicas"] == 4
    for key in want - {("Deployment", "pd-prefill")}:  # the same objects, adopted, not new ones
        assert after[key]["metadata"]["uid"] == before[key]["metadata"]["uid"], key
    all_deployments = kube.get(
        f"/apis/apps/v1/namespaces/{kube.namespace}/deployments?labelSelector={SELECTOR}"
    )["items"]
    names = [d["metadata"]["name"] for d in all_deployments]
    assert len(names) == len(set(names)) == 8


# ---------------------------------------------------------------- conflicts and the REST layer


def test_an_object_owned_by_someone_else_is_reported_and_left_alone(kube, operator):
    kube.kubectl("create", "configmap", "pd-graph", "--from-literal=owner=someone-else")
    apply(kube, DISAGG)
    want = expected_children(DISAGG) - {("ConfigMap", "pd-graph")}

    def reported() -> dict | None:
        ig = graph(kube, "pd")
        return ig if condition(ig, "Degraded").get("reason") == "ChildConflict" else None

    ig = wait_for(reported, "the ChildConflict condition")
    assert "ConfigMap pd-graph" in condition(ig, "Degraded")["message"]
    assert ig["status"]["phase"] == "Degraded"
    wait_for(lambda: set(children(kube, "pd")) == want, "the other children created")
    foreign = kube.get(f"/api/v1/namespaces/{kube.namespace}/configmaps/pd-graph")
    assert foreign["data"] == {"owner": "someone-else"} and not foreign["metadata"].get("ownerReferences")

    # The foreign object goes: no event of ours says so (it has not our labels); the resync notices.
    operator.stop()
    operator.start(resync_seconds=1)
    kube.kubectl("delete", "configmap", "pd-graph")
    wait_for(converged(kube, "pd", expected_children(DISAGG)), "our ConfigMap after the resync")
    # The pass that recreates it writes the status after the children: wait for that write too.
    wait_for(
        lambda: condition(graph(kube, "pd"), "Degraded").get("reason") == "AsExpected", "conflict cleared"
    )


def test_rest_api_reads_and_maps_missing_objects_to_none(kube):
    from inference_graph_operator.kube import RestKubeApi

    api = RestKubeApi.from_environment({"KUBECONFIG": str(kube.kubeconfig)})
    ns = kube.namespace
    assert api.get_graph(ns, "missing") is None
    assert api.get("Deployment", ns, "missing") is None
    kube.kubectl("create", "configmap", "c", "--from-literal=k=v")
    kube.kubectl("label", "configmap", "c", "t=c")
    (listed,) = api.list_children(ns, "t=c")
    assert (listed["apiVersion"], listed["kind"], listed["data"]) == ("v1", "ConfigMap", {"k": "v"})
    assert api.get("ConfigMap", ns, "c")["data"] == {"k": "v"}


async def test_planner_decisions_set_the_autoscaled_roles_replicas_and_status(kube, operator, etcd_server):
    from inference_graph.runtime.discovery import Discovery

    discovery = await Discovery.connect(etcd_server.endpoints)
    try:
        scaled = json.loads(json.dumps(DISAGG))
        scaled["metadata"]["name"] = "scaled"
        services = scaled["spec"]["services"]
        services["decode"]["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
        scaled["spec"]["planner"] = {"policy": "load"}  # sla with vLLM would need a measured profile
        apply(kube, scaled)
        planner = wait_for(lambda: deployment(kube, "scaled-planner"), "the planner's Deployment")
        env = {e["name"]: e.get("value") for e in planner["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["IG_FRONTEND_URL"] == "http://scaled-frontend:8000"
        prefill_before = deployment(kube, "scaled-prefill")["spec"]["replicas"]

        await discovery.put_replicas("scaled", {"decode": 3, "prefill": 5})
        wait_for(lambda: deployment(kube, "scaled-decode")["spec"]["replicas"] == 3, "decode scaled to 3")
        wait_for(
            lambda: (
                (graph(kube, "scaled").get("status") or {})
                .get("services", {})
                .get("decode", {})
                .get("desired")
                == 3
            ),
            "status shows the decision",
        )
        # prefill does not autoscale in this graph: its manual replicas win
        assert deployment(kube, "scaled-prefill")["spec"]["replicas"] == prefill_before

        await discovery.put_replicas("scaled", {"decode": 9})
        wait_for(
            lambda: deployment(kube, "scaled-decode")["spec"]["replicas"] == 4, "kept within maxReplicas"
        )
    finally:
        await discovery.close()


async def test_planner_decisions_in_the_graphs_own_etcd_are_followed(kube, operator, etcd_server):
    # A graph that names its own etcd has its planner there: the operator follows that etcd, not its
    # default one, where a decision for the same graph name is left in place to tell them apart.
    from inference_graph.runtime.discovery import Discovery
    from inference_graph.runtime.embedded import EmbeddedEtcd

    with EmbeddedEtcd() as own_etcd:
        default = await Discovery.connect(etcd_server.endpoints)
        own = await Discovery.connect(own_etcd.endpoints)
        try:
            await default.put_replicas("own-etcd", {"decode": 2})
            body = json.loads(json.dumps(DISAGG))
            body["metadata"]["name"] = "own-etcd"
            body["spec"]["services"]["decode"]["autoscaling"] = {
                "enabled": True,
                "minReplicas": 1,
                "maxReplicas": 4,
            }
            body["spec"]["planner"] = {"policy": "load"}
            body["spec"]["infrastructure"] = {"etcd": {"endpoints": own_etcd.endpoints}}
            apply(kube, body)
            wait_for(lambda: deployment(kube, "own-etcd-planner"), "the planner's Deployment")
            await own.put_replicas("own-etcd", {"decode": 3})
            wait_for(lambda: deployment(kube, "own-etcd-decode")["spec"]["replicas"] == 3, "decode at 3")
            await own.put_replicas("own-etcd", {"decode": 4})
            wait_for(lambda: deployment(kube, "own-etcd-decode")["spec"]["replicas"] == 4, "decode at 4")
        finally:
            await default.close()
            await own.close()
