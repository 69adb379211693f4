"""The local control plane of tests/cluster: `make cluster` gives Ready fake GPU nodes, a GPU Deployment
becomes Ready pods, and the cluster's helm is v4; stopping it leaves no process behind.

The session fixture ``cluster`` (tests/conftest.py, shared with tests/kube) builds the pinned binaries
when the cache lacks them (tens of minutes, once per version set; tests/cluster/versions.env). With
IG_CLUSTER_BUILD=0 and no binaries the tests skip.
"""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from . import cluster as ctl

# The timeout covers a cold build in the fixture (about 40 minutes on 2 busy cores; see docs/kubernetes.md).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(5400)]


def kubectl_json(c, *args):
    return json.loads(c.kubectl(*args, "-o", "json").stdout)


def test_four_fake_gpu_nodes_are_ready(cluster):
    nodes = kubectl_json(cluster, "get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [f"gpu-node-{i}" for i in range(4)]
    for node in nodes:
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["status"]["allocatable"][ctl.RDMA_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"


def test_gpu_deployment_gets_ready_pods(cluster):
    ns = f"smoke-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gpu"}},
            "template": {
                "metadata": {"labels": {"app": "gpu"}},
                "spec": {
                    "containers": [
                        {
                            "name": "worker",
                            "image": "fake",  # kwok runs no container
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ]
                },
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    cluster.kubectl("rollout", "status", "-n", ns, "deployment/gpu", "--timeout=60s")
    pods = kubectl_json(cluster, "get", "pods", "-n", ns)["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
        assert pod["spec"]["nodeName"].startswith("gpu-node-")


def test_helm_is_v4(cluster):
    out = subprocess.run(
        [str(cluster.bin / "helm"), "version", "--short"], capture_output=True, text=True, check=True
    )
    version = ctl.read_versions()["HELM_VERSION"]
    assert out.stdout.startswith(version), out.stdout
