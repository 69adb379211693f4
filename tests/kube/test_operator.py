"""The real operator (``python -m inference_graph_operator``: kopf + the official client) against the
API emulator, driven with the real kubectl: create, spec update, drift repair, delete with garbage
collection, invalid spec, operator restart. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from inference_graph_operator.render import SPEC_HASH_ANNOTATION
from support import eventually_sync

from .common import CONFIGS, ROOT, WIDE_HEADER

CRD = ROOT / "crds" / "inferencegraph.yaml"
SELECTOR = "app.kubernetes.io/managed-by=inference-graph-operator"
DEADLINE = 30.0  # seconds; a loaded 2-core machine runs five test sessions at once
T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """``eventually_sync`` with this module's deadline (31 call sites name ``what`` positionally)."""
    return eventually_sync(check, timeout=timeout, interval=0.05, what=what)


class Operator:
    """The operator as a subprocess against the emulator; its log is kept for failure messages."""

    def __init__(self, kubeconfig: Path, log_path: Path, etcd_endpoints: list[str]):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.etcd_endpoints = etcd_endpoints
        self.process: subprocess.Popen | None = None

    def start(self, resync_seconds: float = 300) -> Operator:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            # a real etcd, as the chart gives the operator: it follows the planners' decisions there
            "IG_DEFAULT_ETCD_ENDPOINTS": ",".join(self.etcd_endpoints),
            "IG_OPERATOR_LIVENESS": "",  # tests run side by side: no fixed port
            # 300: repairs must come from watch events, not from the periodic resync
            "IG_RESYNC_SECONDS": str(resync_seconds),
            "IG_RUNTIME_IMAGE": "registry.example/runtime:test",
        }
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference_graph_operator"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def cluster(kube_api):
    kube_api.kubectl("apply", "-f", str(CRD))
    return kube_api


@pytest.fixture
def operator(cluster, tmp_path, etcd_server) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path / "operator.log", etcd_server.endpoints).start()
    try:
        yield op
    finally:
        op.stop()
        print(op.log()[-6000:])  # shown by pytest only when the test fails


# ---------------------------------------------------------------- reading the emulated cluster


def get(cluster, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{cluster.url}{path}", timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def graph(cluster, name: str, namespace: str = "default") -> dict | None:
    return get(cluster, f"/apis/inferencegraph.dev/v1alpha1/namespaces/{namespace}/inferencegraphs/{name}")


def children(cluster, graph_name: str, namespace: str = "default") -> dict[tuple[str, str], dict]:
    out = {}
    for kind, path in (
        ("ConfigMap", "/api/v1/namespaces/{ns}/configmaps"),
        ("Service", "/api/v1/namespaces/{ns}/services"),
        ("Deployment", "/apis/apps/v1/namespaces/{ns}/deployments"),
    ):
        listing = get(cluster, f"{path.format(ns=namespace)}?labelSelector={SELECTOR}") or {"items": []}
        for item in listing["items"]:
            if item["metadata"]["labels"].get("app.kubernetes.io/instance") == graph_name:
                out[(kind, item["metadata"]["name"])] = item
    return out


def deployment(cluster, name: str, namespace: str = "default") -> dict | None:
    return get(cluster, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")


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


def apply(cluster, manifest: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def converged(cluster, name: str, want: set[tuple[str, str]]) -> Callable[[], dict | None]:
    """The graph's children are exactly ``want`` and its status describes its current generation."""

    def check() -> dict | None:
        ig = graph(cluster, name)
        status = (ig or {}).get("status") or {}
        if ig is None or status.get("observedGeneration") != ig["metadata"]["generation"]:
            return None
        return ig if set(children(cluster, name)) == want else None

    return check


# ---------------------------------------------------------------- create


def test_create_every_config_children_status_and_printer_columns(cluster, operator):
    manifests = [manifest_of(path) for path in CONFIGS]
    cluster.kubectl("apply", *(arg for path in CONFIGS for arg in ("-f", str(path))))
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        want = expected_children(manifest)
        ig = wait_for(converged(cluster, name, want), f"{name}'s children and status")
        uid = ig["metadata"]["uid"]
        for (kind, child), obj in children(cluster, name).items():
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
        assert status["phase"] == "Progressing"  # nothing is ready: the emulator runs no pods yet
        annotations = ig["metadata"].get("annotations") or {}
        assert not [k for k in annotations if "kopf" in k or k.startswith("inferencegraph.dev/")]
        assert not ig["metadata"].get("finalizers")  # kopf keeps no state on the graph
        assert status["endpoint"] == f"http://{name}-frontend.default.svc:8000"
        assert condition(ig, "Ready")["status"] == "False"

    cluster.set_deployments_ready("default")  # the Deployment controller reports every pod ready
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        ig = wait_for(
            lambda name=name: graph(cluster, name)["status"]["phase"] == "Ready" and graph(cluster, name),
            f"{name} Ready",
        )
        total = sum(s["desired"] for s in ig["status"]["services"].values())
        assert ig["status"]["ready"] == f"{total}/{total}"
        assert condition(ig, "Ready")["reason"] == "AllRolesReady"
        assert condition(ig, "Progressing")["status"] == condition(ig, "Degraded")["status"] == "False"

    table = cluster.kubectl("get", "ig").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        total = sum(s["desired"] for s in graph(cluster, name)["status"]["services"].values())
        assert rows[name][1:4] == ["Ready", f"{total}/{total}", f"http://{name}-frontend.default.svc:8000"]
    wide = cluster.kubectl("get", "ig", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == WIDE_HEADER


# ---------------------------------------------------------------- spec update


def test_spec_update_rolls_only_the_affected_role(cluster, operator):
    apply(cluster, DISAGG)
    want = expected_children(DISAGG)
    wait_for(converged(cluster, "pd", want), "pd created")
    before = children(cluster, "pd")

    changed = json.loads(json.dumps(DISAGG))
    changed["spec"]["services"]["prefill"]["env"] = {"EXTRA": "1"}
    changed["spec"]["services"]["decode"]["replicas"] = 3
    apply(cluster, changed)

    def rolled() -> dict | None:
        prefill = deployment(cluster, "pd-prefill")
        decode = deployment(cluster, "pd-decode")
        ok = prefill["metadata"]["generation"] > 1 and decode["spec"]["replicas"] == 3
        return children(cluster, "pd") if ok else None

    after = wait_for(rolled, "prefill's new template and decode's new replica count")
    wait_for(converged(cluster, "pd", want), "status of generation 2")

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
    assert graph(cluster, "pd")["status"]["services"]["decode"]["desired"] == 3


def test_a_removed_role_loses_its_deployment(cluster, operator):
    apply(cluster, DISAGG)
    wait_for(converged(cluster, "pd", expected_children(DISAGG)), "pd created")
    aggregated = json.loads(json.dumps(DISAGG))
    aggregated["spec"]["disaggregation"]["enabled"] = False
    del aggregated["spec"]["services"]["prefill"]
    cluster.kubectl("replace", "-f", "-", input=yaml.safe_dump(aggregated))
    ig = wait_for(converged(cluster, "pd", expected_children(aggregated)), "pd-prefill deleted")
    assert "prefill" not in ig["status"]["services"]


# ---------------------------------------------------------------- drift repair


def test_hand_edits_and_deletions_of_children_are_undone(cluster, operator):
    apply(cluster, DISAGG)
    want = expected_children(DISAGG)
    wait_for(converged(cluster, "pd", want), "pd created")
    before = children(cluster, "pd")

    cluster.kubectl("scale", "deployment", "pd-decode", "--replicas=5")
    wait_for(lambda: deployment(cluster, "pd-decode")["spec"]["replicas"] == 2, "decode scaled back to 2")

    cluster.kubectl("set", "env", "deployment/pd-prefill", "HACK=1")
    wait_for(
        lambda: all(
            e["name"] != "HACK"
            for e in deployment(cluster, "pd-prefill")["spec"]["template"]["spec"]["containers"][0]["env"]
        ),
        "prefill env restored",
    )

    cluster.kubectl("delete", "deployment", "pd-frontend")
    cluster.kubectl("delete", "configmap", "pd-graph")
    cluster.kubectl("delete", "service", "pd-frontend")
    recreated = [("Deployment", "pd-frontend"), ("ConfigMap", "pd-graph"), ("Service", "pd-frontend")]

    def all_back() -> dict | None:
        objs = children(cluster, "pd")
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


def test_deleting_the_graph_garbage_collects_its_children(cluster, operator):
    apply(cluster, DISAGG)
    wait_for(converged(cluster, "pd", expected_children(DISAGG)), "pd created")
    cluster.kubectl("delete", "ig", "pd", "--wait=true")
    wait_for(lambda: not children(cluster, "pd"), "children garbage-collected")
    assert graph(cluster, "pd") is None
    assert "Traceback" not in operator.log()


# ---------------------------------------------------------------- invalid spec


def test_invalid_spec_names_the_field_and_creates_nothing(cluster, operator):
    invalid = json.loads(json.dumps(DISAGG))
    invalid["spec"]["disaggregation"]["enabled"] = False  # prefill without disaggregation: schema-valid
    apply(cluster, invalid)
    ig = wait_for(
        lambda: (g := graph(cluster, "pd")) and (g.get("status") or {}).get("phase") and g, "pd status"
    )
    degraded = condition(ig, "Degraded")
    assert ig["status"]["phase"] == "Failed"
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "services.prefill" in degraded["message"] and "disaggregation.enabled" in degraded["message"]
    assert children(cluster, "pd") == {}
    printed = cluster.kubectl("get", "ig", "pd").stdout.splitlines()[1].split()
    assert printed[1] == "Failed"

    apply(cluster, DISAGG)  # fixed: everything appears
    wait_for(converged(cluster, "pd", expected_children(DISAGG)), "pd created after the fix")
    running = children(cluster, "pd")
    apply(
        cluster,
        {**invalid, "spec": {**invalid["spec"], "services": {"decode": {"replicas": 9}, "prefill": {}}}},
    )
    ig = wait_for(
        lambda: (g := graph(cluster, "pd"))["status"]["observedGeneration"] == 3 and g, "generation 3 seen"
    )
    assert condition(ig, "Degraded")["reason"] == "InvalidSpec"
    assert {k: v["metadata"]["resourceVersion"] for k, v in children(cluster, "pd").items()} == {
        k: v["metadata"]["resourceVersion"] for k, v in running.items()
    }  # an invalid update changes nothing that runs


# ---------------------------------------------------------------- restart


def test_operator_restart_converges_without_duplicates(cluster, operator):
    apply(cluster, DISAGG)
    want = expected_children(DISAGG)
    wait_for(converged(cluster, "pd", want), "pd created")
    before = children(cluster, "pd")

    operator.stop()
    cluster.kubectl("delete", "deployment", "pd-prefill")  # while nobody watches
    scaled = json.loads(json.dumps(DISAGG))
    scaled["spec"]["services"]["decode"]["replicas"] = 4
    apply(cluster, scaled)
    other = {**DISAGG, "metadata": {"name": "second"}}
    apply(cluster, other)
    operator.start()

    wait_for(converged(cluster, "pd", want), "pd converged after the restart")
    wait_for(converged(cluster, "second", expected_children(other)), "a graph made while down is created")
    after = children(cluster, "pd")
    assert deployment(cluster, "pd-decode")["spec"]["replicas"] == 4
    for key in want - {("Deployment", "pd-prefill")}:  # the same objects, adopted, not new ones
        assert after[key]["metadata"]["uid"] == before[key]["metadata"]["uid"], key
    all_deployments = get(cluster, f"/apis/apps/v1/deployments?labelSelector={SELECTOR}")["items"]
    names = [d["metadata"]["name"] for d in all_deployments]
    assert len(names) == len(set(names)) == 8


# ---------------------------------------------------------------- conflicts and the REST layer


def test_an_object_owned_by_someone_else_is_reported_and_left_alone(cluster, operator):
    cluster.kubectl("create", "configmap", "pd-graph", "--from-literal=owner=someone-else")
    apply(cluster, DISAGG)
    want = expected_children(DISAGG) - {("ConfigMap", "pd-graph")}

    def reported() -> dict | None:
        ig = graph(cluster, "pd")
        return ig if condition(ig, "Degraded").get("reason") == "ChildConflict" else None

    ig = wait_for(reported, "the ChildConflict condition")
    assert "ConfigMap pd-graph" in condition(ig, "Degraded")["message"]
    assert ig["status"]["phase"] == "Degraded"
    wait_for(lambda: set(children(cluster, "pd")) == want, "the other children created")
    foreign = get(cluster, "/api/v1/namespaces/default/configmaps/pd-graph")
    assert foreign["data"] == {"owner": "someone-else"} and not foreign["metadata"].get("ownerReferences")

    # The foreign object goes: no event of ours says so (it has not our labels); the resync notices.
    operator.stop()
    operator.start(resync_seconds=1)
    cluster.kubectl("delete", "configmap", "pd-graph")
    wait_for(converged(cluster, "pd", expected_children(DISAGG)), "our ConfigMap after the resync")
    # The pass that recreates it writes the status after the children: wait for that write too.
    wait_for(
        lambda: condition(graph(cluster, "pd"), "Degraded").get("reason") == "AsExpected", "conflict cleared"
    )


def test_rest_api_maps_error_responses_to_api_errors(cluster):
    from inference_graph_operator.kube import ApiError, RestKubeApi

    api = RestKubeApi.from_environment({"KUBECONFIG": str(cluster.kubeconfig)})
    assert api.get_graph("default", "missing") is None
    assert api.get("Deployment", "default", "missing") is None
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}}
    created = api.create(configmap)
    assert created["metadata"]["uid"]
    with pytest.raises(ApiError) as err:
        api.create(configmap)
    assert err.value.status == 409 and "already exists" in err.value.reason
    patched = api.patch({**configmap, "data": {"k": "v"}})
    assert patched["data"] == {"k": "v"}
    assert [c["metadata"]["name"] for c in api.list_children("default", "")] == ["c"]
    assert api.list_children("default", "")[0]["apiVersion"] == "v1"
    api.delete(configmap)
    api.delete(configmap)  # already gone: not an error
    assert api.get("ConfigMap", "default", "c") is None


async def test_planner_decisions_set_the_autoscaled_roles_replicas_and_status(cluster, operator, etcd_server):
    from inference_graph.runtime.discovery import Discovery

    discovery = await Discovery.connect(etcd_server.endpoints)
    try:
        scaled = json.loads(json.dumps(DISAGG))
        scaled["metadata"]["name"] = "scaled"
        services = scaled["spec"]["services"]
        services["decode"]["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
        scaled["spec"]["planner"] = {"policy": "load"}  # sla with vLLM would need a measured profile
        apply(cluster, scaled)
        planner = wait_for(lambda: deployment(cluster, "scaled-planner"), "the planner's Deployment")
        env = {e["name"]: e.get("value") for e in planner["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["IG_FRONTEND_URL"] == "http://scaled-frontend:8000"
        prefill_before = deployment(cluster, "scaled-prefill")["spec"]["replicas"]

        await discovery.put_replicas("scaled", {"decode": 3, "prefill": 5})
        wait_for(lambda: deployment(cluster, "scaled-decode")["spec"]["replicas"] == 3, "decode scaled to 3")
        wait_for(
            lambda: (
                (graph(cluster, "scaled").get("status") or {})
                .get("services", {})
                .get("decode", {})
                .get("desired")
                == 3
            ),
            "status shows the decision",
        )
        # prefill does not autoscale in this graph: its manual replicas win
        assert deployment(cluster, "scaled-prefill")["spec"]["replicas"] == prefill_before

        await discovery.put_replicas("scaled", {"decode": 9})
        wait_for(
            lambda: deployment(cluster, "scaled-decode")["spec"]["replicas"] == 4, "kept within maxReplicas"
        )
    finally:
        await discovery.close()


async def test_planner_decisions_in_the_graphs_own_etcd_are_followed(cluster, operator, etcd_server):
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
            apply(cluster, body)
            wait_for(lambda: deployment(cluster, "own-etcd-planner"), "the planner's Deployment")
            await own.put_replicas("own-etcd", {"decode": 3})
            wait_for(lambda: deployment(cluster, "own-etcd-decode")["spec"]["replicas"] == 3, "decode at 3")
            await own.put_replicas("own-etcd", {"decode": 4})
            wait_for(lambda: deployment(cluster, "own-etcd-decode")["spec"]["replicas"] == 4, "decode at 4")
        finally:
            await default.close()
            await own.close()
