"""The API emulator (tests/kube/emulator) against real clients: kubectl and the official client.

These tests pin the behaviour the operator, kopf and Helm tests rely on; each would fail if the
emulator lost the semantics it names.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
import yaml
from kubernetes import client, watch

from .common import CONFIGS, ROOT

CRD = ROOT / "crds" / "inferencegraph.yaml"
GROUP, VERSION, PLURAL = "inferencegraph.dev", "v1alpha1", "inferencegraphs"


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


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
    assert wide == ["NAME", "PHASE", "READY", "FRONTEND", "PROCESSOR", "DECODE", "PREFILL", "ENDPOINT", "AGE"]


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
    core, namespace: str, resource_version: str | None = None
) -> tuple[queue.Queue, watch.Watch]:
    """Stream ConfigMap events of a namespace into a queue from a thread."""
    events: queue.Queue = queue.Queue()
    stream = watch.Watch()
    kwargs = {"resource_version": resource_version} if resource_version else {}

    def run():
        for event in stream.stream(core.list_namespaced_config_map, namespace, timeout_seconds=30, **kwargs):
            events.put(
                (event["type"], event["object"].metadata.name, event["object"].metadata.resource_version)
            )

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
