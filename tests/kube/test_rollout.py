"""Rollouts and node drains without dropped traffic, on the session cluster with the real operator (the
chart's Role), Deployment controller, disruption controller, eviction API and ``kubectl drain``: a P/D
graph's decode role (2 replicas) never has zero ready pods while a node holding its pods is drained (its
PodDisruptionBudget makes the drain wait for the replacement) or while a change to decode rolls it
(maxUnavailable 0, maxSurge 1); a change to decode leaves prefill's Deployment untouched.

Ready decode pods are counted from a pod watch (every event the API server sends), not by polling.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, watch

from .test_operator import DISAGG, apply, deployment, graph, is_ready, start_operator, wait_for


@pytest.fixture
def kube(kube, crd):
    return kube


@pytest.fixture
def operator(kube, tmp_path, etcd_server):
    yield from start_operator(kube, tmp_path, etcd_server)


def pd_graph(decode_replicas: int = 2, placement: dict | None = None) -> dict:
    """configs/disagg.yaml's shape: vLLM workers (1 GPU each, placed by kube-scheduler on kwok's nodes)."""
    manifest = json.loads(json.dumps(DISAGG))
    manifest["spec"]["engine"] = {"type": "vllm"}
    manifest["spec"]["services"] = {
        "decode": {"replicas": decode_replicas, **(placement or {})},
        "prefill": {"replicas": 1, **(placement or {})},
    }
    return manifest


class ReadyWatch:
    """The ready, not terminating pods of one role, recounted on every watch event (from a listing's
    resourceVersion, so the first count is the listing's). ``counts`` holds every count observed."""

    def __init__(self, kube, role: str):
        self.selector = f"app.kubernetes.io/instance=pd,app.kubernetes.io/component={role}"
        self.namespace = kube.namespace
        self.api_client = kube.client()
        self.core = client.CoreV1Api(self.api_client)
        self.pods: dict[str, dict] = {}
        self.counts: list[int] = []
        self.log: list[str] = []
        self.events = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ready(self) -> int:
        return sum(
            1 for p in self.pods.values() if is_ready(p) and not p["metadata"].get("deletionTimestamp")
        )

    def __enter__(self) -> ReadyWatch:
        listing = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        for pod in self.api_client.sanitize_for_serialization(listing.items):
            self.pods[pod["metadata"]["name"]] = pod
        self.version = listing.metadata.resource_version
        self.counts.append(self._ready())
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=self.version,
                    timeout_seconds=1,  # the server ends the watch: the stop flag is seen within ~1 s
                    _preload_content=False,
                )
                for event in stream:
                    pod = event["raw_object"]
                    self.version = pod["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self.pods.pop(pod["metadata"]["name"], None)
                    else:
                        self.pods[pod["metadata"]["name"]] = pod
                    self.events += 1
                    self.counts.append(self._ready())
                    self.log.append(
                        f"{time.monotonic():.3f} {event['type']} {pod['metadata']['name']} "
                        f"ready={is_ready(pod)} deleting={bool(pod['metadata'].get('deletionTimestamp'))} "
                        f"node={pod['spec'].get('nodeName')} -> {self.counts[-1]}"
                    )
        except BaseException as err:  # shown by the test, not lost in the thread
            self.errors.append(err)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.api_client.close()


def converged_deployment(kube, name: str, replicas: int) -> dict | None:
    d = deployment(kube, name)
    status = (d or {}).get("status") or {}
    done = (
        d is not None
        and status.get("observedGeneration") == d["metadata"]["generation"]
        and status.get("replicas") == status.get("updatedReplicas") == status.get("readyReplicas") == replicas
    )
    return d if done else None


def budget(kube, name: str) -> dict | None:
    return kube.get(f"/apis/policy/v1/namespaces/{kube.namespace}/poddisruptionbudgets/{name}")


@pytest.fixture
def drain_nodes(kube) -> Iterator[tuple[list[str], dict]]:
    """Two fake 8-GPU nodes of this test's own (kwok makes them Ready), tainted so that only pods placed
    there on purpose land there: a drain then evicts this test's pods and no other's. Yields their names
    and the placement (nodeSelector, tolerations) that puts a role on them."""
    tag = secrets.token_hex(3)
    names = [f"drain-{tag}-a", f"drain-{tag}-b"]
    capacity = {"cpu": "128", "memory": "2Ti", "pods": "250", "nvidia.com/gpu": "8", "rdma/ib": "8"}
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "type": "kwok", "drain-test": tag},
            },
            "spec": {"taints": [{"key": "drain-test", "value": tag, "effect": "NoSchedule"}]},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        for name in names
    ]
    kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    placement = {
        "nodeSelector": {"drain-test": tag},
        "tolerations": [{"key": "drain-test", "operator": "Equal", "value": tag, "effect": "NoSchedule"}],
    }
    try:
        wait_for(
            lambda: all(is_ready(kube.get(f"/api/v1/nodes/{n}") or {"status": {}}) for n in names),
            "the drain nodes Ready",
        )
        yield names, placement
    finally:
        kube.kubectl("delete", "node", *names, "--ignore-not-found", "--wait=false", check=False)


def test_draining_a_node_never_leaves_decode_without_a_ready_pod(kube, operator, drain_nodes):
    """Both decode pods on node a, b cordoned; a drained: the PodDisruptionBudget admits one decode pod's
    eviction and refuses the other's while the first one's replacement has nowhere to go (Pending), so
    the drain waits; b uncordoned, the replacement turns Ready there and the drain completes. At every
    watch event decode has a ready pod."""
    (node_a, node_b), placement = drain_nodes
    kube.kubectl("cordon", node_b)
    apply(kube, pd_graph(2, placement))
    wait_for(lambda: converged_deployment(kube, "pd-decode", 2), "decode's 2 pods Ready")
    pdb = wait_for(lambda: budget(kube, "pd-decode"), "decode's PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == graph(kube, "pd")["metadata"]["uid"]
    assert budget(kube, "pd-prefill") is None  # 1 replica: no budget
    wait_for(lambda: (budget(kube, "pd-decode").get("status") or {}).get("disruptionsAllowed") == 1,
             "the budget allowing one disruption")  # fmt: skip
    pods = kube.json("get", "pods", "-l", "app.kubernetes.io/component=decode")["items"]
    assert {p["spec"]["nodeName"] for p in pods} == {node_a}

    with ReadyWatch(kube, "decode") as ready:
        drain = subprocess.Popen(
            [
                str(kube.bin / "kubectl"), f"--kubeconfig={kube.kubeconfig}", "drain", node_a,
                "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=50s",
                "--pod-selector=app.kubernetes.io/instance=pd",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        output: list[str] = []
        refused = threading.Event()

        def read() -> None:
            assert drain.stdout is not None
            for line in drain.stdout:
                output.append(line)
                if "disruption budget" in line:
                    refused.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert refused.wait(30), "".join(output)  # kubectl prints each refused eviction
            # held: one decode pod Ready on a, its replacement Pending (b cordoned, a draining)
            assert ready.counts[-1] == 1, ready.log
            pending = [p for p in ready.pods.values() if not p["spec"].get("nodeName")]
            assert len(pending) == 1, ready.log
            kube.kubectl("uncordon", node_b)
            assert drain.wait(60) == 0, "".join(output)
        finally:
            if drain.poll() is None:
                drain.kill()
                drain.wait()
        reader.join(5)
        wait_for(lambda: converged_deployment(kube, "pd-decode", 2), "decode's 2 pods Ready again")
        wait_for(lambda: ready.counts[-1] == 2, "the watch seeing 2 ready decode pods")
    assert not ready.errors, ready.errors
    assert min(ready.counts) >= 1, ready.log
    assert f"node/{node_a} drained" in "".join(output)
    pods = kube.json("get", "pods", "-l", "app.kubernetes.io/component=decode")["items"]
    assert {p["spec"]["nodeName"] for p in pods} == {node_b}
    assert kube.json("get", "node", node_a)["spec"].get("unschedulable") is True
    kube.kubectl("uncordon", node_a)
    assert not kube.json("get", "node", node_a)["spec"].get("unschedulable")


def test_a_change_to_decode_rolls_decode_only_and_keeps_a_ready_decode_pod(kube, operator):
    """A change to decode's env: decode's Deployment rolls (a surge pod first, an old one removed only
    once a new one is Ready), prefill's Deployment is not written; decode is never without a ready pod.
    Then decode scaled to 1 loses its PodDisruptionBudget."""
    manifest = pd_graph(2)
    apply(kube, manifest)
    wait_for(lambda: converged_deployment(kube, "pd-decode", 2), "decode's 2 pods Ready")
    prefill = wait_for(lambda: converged_deployment(kube, "pd-prefill", 1), "prefill Ready")
    decode = deployment(kube, "pd-decode")
    wait_for(lambda: budget(kube, "pd-decode"), "decode's PodDisruptionBudget")
    assert decode["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }

    manifest["spec"]["services"]["decode"]["env"] = {"ROLLOUT_TEST": "1"}
    with ReadyWatch(kube, "decode") as ready:
        apply(kube, manifest)
        rolled = wait_for(
            lambda: (
                (d := converged_deployment(kube, "pd-decode", 2))
                and d["metadata"]["generation"] > decode["metadata"]["generation"]
                and d
            ),
            "decode rolled",
        )
        # the old ReplicaSet's pods gone: only the new template's pods remain, Ready
        wait_for(
            lambda: (
                len(ready.pods) == 2
                and all(is_ready(p) for p in ready.pods.values())
                and ready.counts[-1] == 2
            ),
            "only the 2 new decode pods",
        )
    assert not ready.errors, ready.errors
    assert ready.events > 0 and min(ready.counts) >= 1, ready.counts
    env = {e["name"]: e.get("value") for e in rolled["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ROLLOUT_TEST"] == "1"
    after = deployment(kube, "pd-prefill")
    assert after["metadata"]["generation"] == prefill["metadata"]["generation"]
    assert after["metadata"]["resourceVersion"] == prefill["metadata"]["resourceVersion"]  # not written
    assert after["spec"]["template"] == prefill["spec"]["template"]

    manifest["spec"]["services"]["decode"]["replicas"] = 1
    apply(kube, manifest)
    wait_for(lambda: budget(kube, "pd-decode") is None, "decode's budget removed at 1 replica")
    assert deployment(kube, "pd-decode")["spec"]["replicas"] == 1
