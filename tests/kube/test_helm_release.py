"""charts/dynamo installed, upgraded and uninstalled by the real helm CLI (v4, from the cluster's bin) on the
session cluster: the CRD, RBAC, the operator Deployment, NATS and etcd are admitted by the API server and
their pods scheduled on the fake nodes and made Ready by kwok, so ``--wait`` waits for real readiness.

Cluster-scoped objects are shared by the session: the CRD (from the chart's crds/, which helm installs only
when absent and never upgrades or deletes; the ``crd`` fixture applies the same file) and the ClusterRole
and ClusterRoleBinding of a cluster-wide release (named after the release: only one test installs the
README's release name ``dynamo`` cluster-wide; the others use ``watchNamespaceOnly`` or their own names).
"""

from __future__ import annotations

from .common import ROOT

CHART = str(ROOT / "charts" / "dynamo")
RELEASE = "dynamo"  # the README's command: helm install dynamo charts/dynamo
CRD_NAME = "inferencegraphs.inferencegraph.dev"
NAMESPACED = {
    ("Deployment", "dynamo-operator"),
    ("StatefulSet", "dynamo-nats"),
    ("StatefulSet", "dynamo-etcd"),
    ("Service", "dynamo-nats"),
    ("Service", "dynamo-etcd"),
    ("Service", "dynamo-etcd-headless"),
    ("ServiceAccount", "dynamo-operator"),
}
NAMESPACE_ONLY = ["--set", "operator.watchNamespaceOnly=true"]


def namespaced_objects(kube) -> set[tuple[str, str]]:
    listed = kube.json("get", "deploy,sts,svc,sa,role,rolebinding", "-l", "app.kubernetes.io/part-of=dynamo")
    return {(item["kind"], item["metadata"]["name"]) for item in listed["items"]}


def operator_env(kube, name: str = "dynamo-operator") -> tuple[dict[str, str], dict]:
    deployment = kube.json("get", "deploy", name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}, deployment


def revisions(kube, release: str = RELEASE) -> dict[int, str]:
    """helm history: revision → status."""
    import json

    history = json.loads(kube.helm("history", release, "-o", "json").stdout)
    return {entry["revision"]: entry["status"] for entry in history}


def ready_pods(kube) -> dict[str, bool]:
    pods = kube.json("get", "pods")["items"]
    return {
        p["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
        )
        for p in pods
    }


def test_lint_is_clean(kube):
    for values in ([], NAMESPACE_ONLY):
        out = kube.helm("lint", "--strict", CHART, *values).stdout
        assert "1 chart(s) linted, 0 chart(s) failed" in out, out
        assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_install_upgrade_uninstall(kube, crd):
    out = kube.helm("install", RELEASE, CHART, "--wait", "--timeout=120s").stdout
    assert "STATUS: deployed" in out
    assert namespaced_objects(kube) == NAMESPACED
    # installed and Ready: the pods were scheduled and kwok reports them ready; the claims are bound
    assert ready_pods(kube) and all(ready_pods(kube).values()), ready_pods(kube)
    claims = kube.json("get", "pvc")["items"]
    assert {c["status"]["phase"] for c in claims} == {"Bound"} and len(claims) == 2
    role = kube.cluster.kubectl("get", "clusterrole", "dynamo-operator", "-o", "name").stdout.strip()
    assert role == "clusterrole.rbac.authorization.k8s.io/dynamo-operator"
    binding = kube.json("get", "clusterrolebinding", "dynamo-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dynamo-operator", "namespace": kube.namespace}
    ]
    env, deployment = operator_env(kube)
    assert env["IG_OPERATOR_LOG_LEVEL"] == "INFO"
    assert deployment["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert revisions(kube) == {1: "deployed"}

    kube.helm("upgrade", RELEASE, CHART, "--set", "operator.logLevel=DEBUG", "--wait", "--timeout=120s")
    env, changed = operator_env(kube)
    assert env["IG_OPERATOR_LOG_LEVEL"] == "DEBUG"
    assert changed["metadata"]["generation"] == deployment["metadata"]["generation"] + 1
    assert changed["metadata"]["uid"] == deployment["metadata"]["uid"]  # updated in place, not replaced
    assert revisions(kube) == {1: "superseded", 2: "deployed"}

    kube.helm("uninstall", RELEASE, "--wait", "--timeout=120s")
    assert namespaced_objects(kube) == set()
    assert kube.json("get", "secrets", "-l", "owner=helm")["items"] == []
    assert kube.cluster.kubectl("get", "clusterrole", "dynamo-operator", check=False).returncode != 0
    # Helm never deletes CRDs from crds/: graphs would go with them
    assert kube.json("get", "crd", CRD_NAME)["metadata"]["name"] == CRD_NAME


def test_upgrade_removes_objects_a_value_turns_off(kube):
    kube.helm("install", RELEASE, CHART, *NAMESPACE_ONLY)
    assert {("Role", "dynamo-operator"), ("RoleBinding", "dynamo-operator")} <= namespaced_objects(kube)
    kube.helm(
        "upgrade", RELEASE, CHART, *NAMESPACE_ONLY, "--set", "nats.enabled=false",
        "--set", "nats.externalUrl=nats://nats.infra:4222",
    )  # fmt: skip
    assert ("StatefulSet", "dynamo-nats") not in namespaced_objects(kube)
    assert ("Service", "dynamo-nats") not in namespaced_objects(kube)
    env, _ = operator_env(kube)
    assert env["IG_DEFAULT_NATS_SERVER"] == "nats://nats.infra:4222"
    assert env["IG_WATCH_NAMESPACE"] == kube.namespace


def test_install_waits_for_pods_the_scheduler_can_place(kube):
    """--wait (kstatus watcher) waits for real readiness: an operator pod no node fits stays Pending and
    the install fails when the timeout passes; the same chart with the default placement is Ready."""
    failed = kube.helm(
        "install", "unplaceable", CHART, *NAMESPACE_ONLY, "--set", "nats.enabled=false",
        "--set", "nats.externalUrl=nats://n:4222", "--set", "etcd.enabled=false",
        "--set", "etcd.externalEndpoints={http://e:2379}", "--set", "operator.nodeSelector.pool=none",
        "--wait", "--timeout=5s", check=False,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "unplaceable-operator" in failed.stderr and "not ready" in failed.stderr, failed.stderr
    (pod,) = kube.json("get", "pods", "-l", "app.kubernetes.io/instance=unplaceable")["items"]
    scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert "didn't match Pod's node affinity/selector" in scheduled["message"]


def test_upgrade_refuses_to_overwrite_a_field_another_manager_changed(kube):
    """Helm 4 applies server-side without force: a Deployment scaled by hand makes the upgrade fail with
    the API server's conflict, naming the field and the other manager (kubectl); --force-conflicts wins."""
    kube.helm("install", RELEASE, CHART, *NAMESPACE_ONLY)
    kube.kubectl("scale", "deploy", "dynamo-operator", "--replicas=3")
    refused = kube.helm(
        "upgrade", RELEASE, CHART, *NAMESPACE_ONLY, "--set", "operator.logLevel=DEBUG", check=False
    )
    assert refused.returncode != 0
    assert 'conflict with "kubectl' in refused.stderr and ".spec.replicas" in refused.stderr, refused.stderr
    assert kube.json("get", "deploy", "dynamo-operator")["spec"]["replicas"] == 3
    kube.helm("upgrade", RELEASE, CHART, *NAMESPACE_ONLY, "--force-conflicts")
    assert kube.json("get", "deploy", "dynamo-operator")["spec"]["replicas"] == 1
