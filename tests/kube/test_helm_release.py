"""charts/dynamo installed, upgraded and uninstalled by the real Helm Go SDK against the API emulator.

Helm 4 applies the chart's objects server-side (fieldManager, force) and keeps its releases in
protobuf-encoded Secrets: both paths of the emulator are exercised here.
"""

from __future__ import annotations

import base64
import gzip
import json

import helm_python as helm
import pytest
import yaml

from .common import ROOT

CHART = ROOT / "charts" / "dynamo"
RELEASE, NAMESPACE = "dynamo", "dynamo-system"
WORKLOADS = {
    ("Deployment", "dynamo-operator"),
    ("StatefulSet", "dynamo-nats"),
    ("StatefulSet", "dynamo-etcd"),
    ("Service", "dynamo-nats"),
    ("Service", "dynamo-etcd"),
    ("Service", "dynamo-etcd-headless"),
    ("ServiceAccount", "dynamo-operator"),
}


@pytest.fixture
def helm_config(kube_api):
    with helm.Config(kubeconfig_path=str(kube_api.kubeconfig), namespace=NAMESPACE) as config:
        yield config


def namespaced_objects(kube_api) -> set[tuple[str, str]]:
    listed = yaml.safe_load(
        kube_api.kubectl("get", "deploy,sts,svc,sa", "-n", NAMESPACE, "-o", "yaml").stdout
    )
    return {(item["kind"], item["metadata"]["name"]) for item in listed["items"]}


def operator_env(kube_api) -> dict[str, str]:
    deployment = yaml.safe_load(
        kube_api.kubectl("get", "deploy", "dynamo-operator", "-n", NAMESPACE, "-o", "yaml").stdout
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}, deployment


def release_secrets(kube_api) -> dict[str, dict]:
    """Helm's release records: name → decoded release (base64 → gzip → JSON, as Helm stores them)."""
    listed = yaml.safe_load(
        kube_api.kubectl("get", "secrets", "-n", NAMESPACE, "-l", "owner=helm", "-o", "yaml").stdout
    )
    decoded = {}
    for item in listed["items"]:
        payload = base64.b64decode(base64.b64decode(item["data"]["release"]))
        decoded[item["metadata"]["name"]] = json.loads(gzip.decompress(payload))
    return decoded


def test_install_upgrade_uninstall(kube_api, helm_config):
    installed = helm_config.install(
        str(CHART), RELEASE, None, namespace=NAMESPACE, create_namespace=True, timeout=60
    )
    assert installed["status"] == "deployed"
    assert namespaced_objects(kube_api) == WORKLOADS
    assert kube_api.kubectl("get", "crd", "inferencegraphs.inferencegraph.dev", "-o", "name").stdout.strip()
    env, deployment = operator_env(kube_api)
    assert env["IG_OPERATOR_LOG_LEVEL"] == "INFO"
    assert deployment["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    assert set(release_secrets(kube_api)) == {"sh.helm.release.v1.dynamo.v1"}

    upgraded = helm_config.upgrade(
        str(CHART), RELEASE, {"operator": {"logLevel": "DEBUG"}}, namespace=NAMESPACE, timeout=60
    )
    assert upgraded["revision"] == 2
    env, changed = operator_env(kube_api)
    assert env["IG_OPERATOR_LOG_LEVEL"] == "DEBUG"
    assert changed["metadata"]["generation"] == deployment["metadata"]["generation"] + 1
    assert changed["metadata"]["uid"] == deployment["metadata"]["uid"]  # updated in place, not replaced
    records = release_secrets(kube_api)
    assert {name: r["info"]["status"] for name, r in records.items()} == {
        "sh.helm.release.v1.dynamo.v1": "superseded",
        "sh.helm.release.v1.dynamo.v2": "deployed",
    }

    helm_config.uninstall(RELEASE, timeout=60)
    assert namespaced_objects(kube_api) == set()
    assert release_secrets(kube_api) == {}
    # Helm never deletes CRDs from crds/: graphs would go with them
    assert (
        kube_api.kubectl("get", "crd", "-o", "name").stdout.strip()
        == "customresourcedefinition.apiextensions.k8s.io/inferencegraphs.inferencegraph.dev"
    )


def test_upgrade_removes_objects_a_value_turns_off(kube_api, helm_config):
    helm_config.install(str(CHART), RELEASE, None, namespace=NAMESPACE, create_namespace=True, timeout=60)
    external = {"nats": {"enabled": False, "externalUrl": "nats://nats.infra:4222"}}
    helm_config.upgrade(str(CHART), RELEASE, external, namespace=NAMESPACE, timeout=60)
    assert namespaced_objects(kube_api) == WORKLOADS - {
        ("StatefulSet", "dynamo-nats"),
        ("Service", "dynamo-nats"),
    }
    env, _ = operator_env(kube_api)
    assert env["IG_DEFAULT_NATS_SERVER"] == "nats://nats.infra:4222"


def test_install_waits_for_workloads_to_be_ready(kube_api, helm_config):
    """Helm's kstatus watcher (watch-list with the initial-events bookmark) sees the readiness the
    emulator's controller switch reports; without it the same install times out."""
    with pytest.raises(helm.HelmError, match="StatefulSet/unready/unready-etcd not ready"):
        helm_config.install(
            str(CHART), "unready", None, namespace="unready", create_namespace=True, wait="watcher", timeout=2
        )
    kube_api.auto_ready = True
    installed = helm_config.install(
        str(CHART), RELEASE, None, namespace=NAMESPACE, create_namespace=True, wait="watcher", timeout=60
    )
    assert installed["status"] == "deployed"
    ready = yaml.safe_load(kube_api.kubectl("get", "sts", "-n", NAMESPACE, "-o", "yaml").stdout)["items"]
    assert {s["metadata"]["name"]: s["status"]["readyReplicas"] for s in ready} == {
        "dynamo-nats": 1,
        "dynamo-etcd": 1,
    }


def test_upgrade_refuses_to_overwrite_a_field_another_manager_changed(kube_api, helm_config):
    """Helm 4 applies server-side without force: a Deployment scaled by hand makes the upgrade fail with
    the real API's conflict, naming the field and the other manager (kubectl)."""
    helm_config.install(str(CHART), RELEASE, None, namespace=NAMESPACE, create_namespace=True, timeout=60)
    kube_api.kubectl("scale", "deploy", "dynamo-operator", "-n", NAMESPACE, "--replicas=3")
    with pytest.raises(helm.HelmError, match=r'conflict with "kubectl" using apps/v1: \.spec\.replicas'):
        helm_config.upgrade(
            str(CHART), RELEASE, {"operator": {"logLevel": "DEBUG"}}, namespace=NAMESPACE, timeout=60
        )
    assert (
        kube_api.kubectl(
            "get", "deploy", "dynamo-operator", "-n", NAMESPACE, "-o", "jsonpath={.spec.replicas}"
        ).stdout
        == "3"
    )
