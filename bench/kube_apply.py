"""Apply → Ready on a real control plane (issue 14's P7): every child created, every pod Ready on kwok's
fake GPU nodes, and the graph's own status Ready.

Starts its own cluster (tests/cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok, LWS) in
a temporary state directory, so a developer's `make cluster` is left alone; applies the CRDs with the
pinned kubectl; runs the operator as a subprocess (``python -m inference_graph_operator``) **with the
admin kubeconfig** (not the chart's ServiceAccount: RBAC is the tests' business, and the authorizer's
cost is the same for both); then

(a) ``--serial`` graphs (default 20) applied one at a time: each is applied and followed until it is
    complete before the next is applied;
(b) ``--burst`` graphs (default 100) applied at once: one server-side apply after another on one
    connection (what ``kubectl apply --server-side -f`` of a multi-document file does), then followed
    until all are complete.

Each graph is ``--config`` (default configs/agg.yaml: a ConfigMap, frontend, processor and decode
Deployments of one replica each, a Service; the decode pod asks for 1 ``nvidia.com/gpu``) under its
own name. The fake nodes have 8 GPUs each; ``--nodes`` defaults to as many as the warm-up graph and
both phases need (1 + 20 + 100 GPUs: 16 nodes), since no graph is deleted during the run.

Timing comes from watches, not polls: one thread per resource (InferenceGraphs, and the operator's
ConfigMaps, Services, Deployments and Pods by their ``managed-by`` label, cluster-wide) streams the API
server's watch events and stamps each with the local clock when it arrives. Per graph, from the moment
its apply request is sent: the graph seen by the watch, all children created (operator), all pods
created (Deployment and ReplicaSet controllers), all pods bound (scheduler), all pods Ready (kwok),
all Deployments ready (Deployment controller), and the graph's Ready condition True (operator): the
last of these is "Ready". CPU seconds over each phase come from /proc for the operator, every cluster
process and this process (the watcher).

    .venv/bin/python bench/kube_apply.py                       # 20 one at a time, then 100 at once
    .venv/bin/python bench/kube_apply.py --serial 5 --burst 10  # quick

Output: tables on stdout, JSON in bench/results/kube_apply[-<label>]-<time>.json, logs (operator and
cluster) in bench/results/logs/kube_apply-<time>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from harness import RESULTS, ROOT, cpu_seconds, fmt, output_args, pct, table, write_json

sys.path.insert(0, str(ROOT / "tests"))
from cluster import cluster as ctl  # tests/cluster/cluster.py

GROUP_VERSION = "inferencegraph.dev/v1alpha1"
SELECTOR = "app.kubernetes.io%2Fmanaged-by%3Dinference-graph-operator"
INSTANCE = "app.kubernetes.io/instance"
WATCHES = {
    "graph": f"/apis/{GROUP_VERSION}/inferencegraphs",
    "configmap": f"/api/v1/configmaps?labelSelector={SELECTOR}",
    "service": f"/api/v1/services?labelSelector={SELECTOR}",
    "deployment": f"/apis/apps/v1/deployments?labelSelector={SELECTOR}",
    "pod": f"/api/v1/pods?labelSelector={SELECTOR}",
}
# Milestones of a graph, in the order they happen, and what each waits on.
MILESTONES = (
    ("applied", "apply request answered"),
    ("seen", "graph seen by the watch"),
    ("children", "all children created (operator)"),
    ("pods_created", "all pods created (Deployment + ReplicaSet controllers)"),
    ("pods_bound", "all pods bound (scheduler)"),
    ("pods_ready", "all pods Ready (kwok)"),
    ("deployments_ready", "all Deployments ready (Deployment controller)"),
    ("status_ready", "graph Ready condition True (operator)"),
)
SERVICES = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok", "lws-controller")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serial", type=int, default=20, help="graphs applied one at a time (0: skip)")
    p.add_argument("--burst", type=int, default=100, help="graphs applied at once (0: skip)")
    p.add_argument("--config", default=str(ROOT / "configs" / "agg.yaml"))
    p.add_argument("--nodes", type=int, default=0, help="fake 8-GPU nodes; 0: as many as the run needs")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per graph (a) or per burst (b)")
    p.add_argument("--resync-seconds", type=float, default=60.0, help="the operator's IG_RESYNC_SECONDS")
    p.add_argument(
        "--kube-api-qps",
        type=int,
        default=0,
        help="client-side rate limit of the controller-manager and scheduler (burst: twice this); "
        "0: Kubernetes' defaults (20 and 50 requests/s)",
    )
    output_args(p)
    return p.parse_args(argv)


# ---------------------------------------------------------------- the graph and what it should become


def load_template(path: str) -> dict:
    return next(
        d for d in yaml.safe_load_all(Path(path).read_text()) if d and d.get("kind") == "InferenceGraph"
    )


def manifest(template: dict, name: str, namespace: str) -> dict:
    m = json.loads(json.dumps(template))
    m["metadata"] = {"name": name, "namespace": namespace}
    return m


def expected(template: dict) -> tuple[set[tuple[str, str]], int, int]:
    """(kind, name suffix) of the watched children, pods per graph, GPUs per graph."""
    from inference_graph.core.spec import parse_graph
    from inference_graph_operator.render import Owner, render

    objs = render(parse_graph(manifest(template, "x", "default")), Owner("x", "uid"))
    kinds = {"ConfigMap": "configmap", "Service": "service", "Deployment": "deployment"}
    children = {(kinds[o["kind"]], o["metadata"]["name"][1:]) for o in objs if o["kind"] in kinds}
    pods = gpus = 0
    for o in objs:
        if o["kind"] == "Deployment":
            replicas = o["spec"].get("replicas", 1)
            pods += replicas
            for c in o["spec"]["template"]["spec"]["containers"]:
                gpus += replicas * int(
                    ((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)
                )
    return children, pods, gpus


class Graph:
    def __init__(self, namespace: str, name: str, want_children: set, want_pods: int):
        self.ns, self.name = namespace, name
        self.want_children = {(kind, name + suffix) for kind, suffix in want_children}
        self.want_pods = want_pods
        self.deployments = {n for k, n in self.want_children if k == "deployment"}
        self.t: dict[str, float] = {}  # milestone -> perf_counter
        self.children: set[tuple[str, str]] = set()
        self.pods: dict[str, dict[str, float]] = {}  # pod -> created/bound/ready
        self.deploy_ready: set[str] = set()

    def mark(self, milestone: str, now: float) -> None:
        self.t.setdefault(milestone, now)

    def update_pods(self, now: float) -> None:
        if len(self.pods) < self.want_pods:
            return
        for stage, milestone in (
            ("created", "pods_created"),
            ("bound", "pods_bound"),
            ("ready", "pods_ready"),
        ):
            if sum(stage in p for p in self.pods.values()) >= self.want_pods:
                self.mark(milestone, now)

    @property
    def complete(self) -> bool:
        return all(m in self.t for m, _ in MILESTONES)

    def since_apply_ms(self) -> dict[str, float]:
        return {m: 1000 * (self.t[m] - self.t["sent"]) for m, _ in MILESTONES if m in self.t}


# ---------------------------------------------------------------- the API server: applies and watches


class Api:
    def __init__(self, port: int, pki: Path):
        self.port = port
        self.tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.conn = self.connect()

    def connect(self, timeout: float | None = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": content_type})
        r = self.conn.getresponse()
        payload = r.read()
        if r.status >= 300:
            raise SystemExit(f"{method} {path}: {r.status} {payload[:500]!r}")
        return json.loads(payload)

    def apply(self, obj: dict) -> None:
        """Server-side apply, as ``kubectl apply --server-side`` sends it."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        path = f"/apis/{GROUP_VERSION}/namespaces/{ns}/inferencegraphs/{name}?fieldManager=kubectl&fieldValidation=Strict"
        self.call("PATCH", path, obj, "application/apply-patch+yaml")

    def namespace(self, name: str) -> None:
        self.call(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )


class Watcher:
    """One thread per resource: LIST for a resourceVersion, then WATCH from it; every event goes to
    ``on_event`` stamped with the arrival time."""

    def __init__(self, api: Api):
        self.api = api
        self.lock = threading.Condition()
        self.graphs: dict[tuple[str, str], Graph] = {}
        self.events = 0
        self.errors: list[str] = []
        self.stopping = False
        self.threads = [
            threading.Thread(target=self.run, args=(k, p), daemon=True) for k, p in WATCHES.items()
        ]
        self.ready = threading.Barrier(len(WATCHES) + 1)

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self.ready.wait(timeout=60)

    def run(self, kind: str, path: str) -> None:
        conn = self.api.connect(timeout=None)
        sep = "&" if "?" in path else "?"
        for _ in range(60):  # a CRD just Established may not be served yet: 404 for a moment
            conn.request("GET", path)
            r = conn.getresponse()
            listed = json.loads(r.read())
            if r.status == 200:
                break
            time.sleep(0.5)  # retrying the start-up LIST, not timing anything
        else:
            self.errors.append(f"LIST {path}: {r.status} {listed}")
            self.ready.abort()
            return
        rv = listed["metadata"]["resourceVersion"]
        conn.request("GET", f"{path}{sep}watch=1&resourceVersion={rv}&timeoutSeconds=3600")
        r = conn.getresponse()
        self.ready.wait(timeout=60)
        while not self.stopping:
            line = r.readline()
            if not line:
                if not self.stopping:
                    self.errors.append(f"{kind} watch ended")
                return
            now = time.perf_counter()
            event = json.loads(line)
            if event["type"] == "ERROR":
                self.errors.append(f"{kind} watch: {event['object']}")
                return
            with self.lock:
                self.events += 1
                self.on_event(kind, event["object"], now)
                self.lock.notify_all()

    def on_event(self, kind: str, obj: dict, now: float) -> None:
        meta = obj["metadata"]
        ns = meta["namespace"]
        if kind == "graph":
            g = self.graphs.get((ns, meta["name"]))
            if g is None:
                return
            g.mark("seen", now)
            conds = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                g.mark("status_ready", now)
            return
        g = self.graphs.get((ns, (meta.get("labels") or {}).get(INSTANCE, "")))
        if g is None:
            return
        if kind == "pod":
            p = g.pods.setdefault(meta["name"], {})
            p.setdefault("created", now)
            if obj["spec"].get("nodeName"):
                p.setdefault("bound", now)
            conds = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                p.setdefault("ready", now)
            g.update_pods(now)
            return
        key = (kind, meta["name"])
        if key in g.want_children:
            g.children.add(key)
            if g.children >= g.want_children:
                g.mark("children", now)
        if kind == "deployment":
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if status.get("readyReplicas", 0) >= spec.get("replicas", 1) and status.get(
                "observedGeneration", 0
            ) >= meta.get("generation", 1):
                g.deploy_ready.add(meta["name"])
                if g.deploy_ready >= g.deployments:
                    g.mark("deployments_ready", now)

    def follow(self, graphs: list[Graph]) -> None:
        with self.lock:
            for g in graphs:
                self.graphs[(g.ns, g.name)] = g

    def wait(self, graphs: list[Graph], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        with self.lock:
            while not all(g.complete for g in graphs):
                if self.errors:
                    raise SystemExit(f"watch failed: {self.errors}")
                left = deadline - time.perf_counter()
                if left <= 0:
                    stuck = [g for g in graphs if not g.complete]
                    g = stuck[0]
                    raise SystemExit(
                        f"{len(stuck)} of {len(graphs)} graphs not complete after {timeout:.0f} s; "
                        f"{g.ns}/{g.name} reached {sorted(g.t)}"
                    )
                self.lock.wait(timeout=min(left, 1.0))


# ---------------------------------------------------------------- CPU meter of the operator and the cluster


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}


def cpu_delta(before: dict[str, float], pids: dict[str, int]) -> dict[str, float]:
    after = cpu_snapshot(pids)
    return {name: round(after[name] - before[name], 2) for name in pids}


# ---------------------------------------------------------------- the two phases


def serial(api: Api, watcher: Watcher, template: dict, want, args, pids) -> dict:
    children, pods, _ = want
    api.namespace("serial")
    load = os.getloadavg()
    cpu0 = cpu_snapshot(pids)
    t0 = time.perf_counter()
    graphs = []
    for i in range(args.serial):
        g = Graph("serial", f"g{i:03d}", children, pods)
        watcher.follow([g])
        g.t["sent"] = time.perf_counter()
        api.apply(manifest(template, g.name, g.ns))
        g.mark("applied", time.perf_counter())
        watcher.wait([g], args.timeout)
        graphs.append(g)
    wall = time.perf_counter() - t0
    per = [g.since_apply_ms() for g in graphs]
    return {
        "graphs": args.serial,
        "loadavg_before": load,
        "wall_s": round(wall, 2),
        "milestones_ms": {
            m: {
                q: round(pct([p[m] for p in per], v), 1)
                for q, v in (("p50", 0.5), ("p90", 0.9), ("max", 1.0))
            }
            for m, _ in MILESTONES
        },
        "ready_ms": [round(p["status_ready"], 1) for p in per],
        "cpu_s": cpu_delta(cpu0, pids),
    }


def burst(api: Api, watcher: Watcher, template: dict, want, args, pids) -> dict:
    children, pods, _ = want
    api.namespace("burst")
    graphs = [Graph("burst", f"g{i:03d}", children, pods) for i in range(args.burst)]
    watcher.follow(graphs)
    load = os.getloadavg()
    cpu0 = cpu_snapshot(pids)
    t0 = time.perf_counter()
    for g in graphs:
        g.t["sent"] = time.perf_counter()
        api.apply(manifest(template, g.name, g.ns))
        g.mark("applied", time.perf_counter())
    watcher.wait(graphs, args.timeout)
    wall = max(g.t["status_ready"] for g in graphs) - t0
    cpu = cpu_delta(cpu0, pids)
    per = [g.since_apply_ms() for g in graphs]
    return {
        "graphs": args.burst,
        "loadavg_before": load,
        "wall_s": round(wall, 2),
        "all_by_ms": {m: round(1000 * (max(g.t[m] for g in graphs) - t0), 1) for m, _ in MILESTONES},
        "milestones_ms": {
            m: {
                q: round(pct([p[m] for p in per], v), 1)
                for q, v in (("p50", 0.5), ("p90", 0.9), ("max", 1.0))
            }
            for m, _ in MILESTONES
        },
        "cpu_s": cpu,
    }


class BenchCluster(ctl.Cluster):
    """tests/cluster's control plane, with ``--kube-api-qps``/``--kube-api-burst`` added to the
    controller-manager's and the scheduler's command lines when asked (their client-side rate limits:
    Kubernetes' defaults are 20/30 and 50/100)."""

    extra: dict[str, list[str]] = {}

    def start(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        return super().start(name, [*args, *self.extra.get(name, [])], env)


def start_operator(kubeconfig: Path, log: Path, resync: float) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IG_") and k != "KUBECONFIG"},
        "KUBECONFIG": str(kubeconfig),
        "IG_OPERATOR_LIVENESS": "",
        "IG_OPERATOR_LOG_LEVEL": "WARNING",
        "IG_RESYNC_SECONDS": str(resync),
    }
    with log.open("w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "inference_graph_operator"], env=env, stdout=f, stderr=f
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    template = load_template(args.config)
    want = expected(template)
    _, pods_per_graph, gpus = want
    need = gpus * (1 + args.serial + args.burst)
    if not args.nodes:
        args.nodes = max(4, math.ceil(need / 8))
    elif need > 8 * args.nodes:
        print(f"note: {need} GPUs wanted, {8 * args.nodes} on {args.nodes} nodes: some pods will not fit")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / "logs" / f"kube_apply-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kube-apply-") as state_dir:
        t0 = time.monotonic()
        cluster = BenchCluster(ctl.build(), Path(state_dir))
        if args.kube_api_qps:
            qps = [f"--kube-api-qps={args.kube_api_qps}", f"--kube-api-burst={2 * args.kube_api_qps}"]
            cluster.extra = {"kube-controller-manager": qps, "kube-scheduler": qps}
        operator = None
        watcher = None
        try:
            cluster.up(nodes=args.nodes)
            results["cluster_up_s"] = round(time.monotonic() - t0, 1)
            cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
            api = Api(cluster.state["ports"]["apiserver"], Path(cluster.state["tmp"]) / "pki")
            watcher = Watcher(api)
            watcher.start()
            operator = start_operator(cluster.kubeconfig, logs / "operator.log", args.resync_seconds)
            pids = {"operator": operator.pid, **{n: cluster.state["processes"][n] for n in SERVICES}}
            pids["bench (watcher)"] = os.getpid()
            api.namespace("warmup")  # imports, login, watches: the operator is warm before timing
            g = Graph("warmup", "warmup", want[0], pods_per_graph)
            watcher.follow([g])
            g.t["sent"] = time.perf_counter()
            api.apply(manifest(template, g.name, g.ns))
            g.mark("applied", time.perf_counter())
            watcher.wait([g], 120)
            results["warmup_ready_ms"] = round(g.since_apply_ms()["status_ready"], 1)
            print(
                f"cluster up in {results['cluster_up_s']} s ({args.nodes} nodes); warm-up graph Ready in "
                f"{results['warmup_ready_ms']:.0f} ms",
                flush=True,
            )
            if args.serial:
                results["serial"] = serial(api, watcher, template, want, args, pids)
                print(
                    f"(a) {args.serial} graphs one at a time: done in {results['serial']['wall_s']} s",
                    flush=True,
                )
            if args.burst:
                results["burst"] = burst(api, watcher, template, want, args, pids)
                print(
                    f"(b) {args.burst} graphs at once: all Ready in {results['burst']['wall_s']} s",
                    flush=True,
                )
            results["watch_events"] = watcher.events
        finally:
            if watcher is not None:
                watcher.stopping = True
            if operator is not None:
                operator.terminate()
                try:
                    operator.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    operator.kill()
                    operator.wait()
            for name in cluster.state.get("processes", {}):
                src = Path(state_dir) / "logs" / f"{name}.log"
                if src.exists():
                    shutil.copyfile(src, logs / f"{name}.log")
            ctl.stop(cluster.state, quiet=True)
    results.update(
        nodes=args.nodes,
        pods_per_graph=pods_per_graph,
        gpus_per_graph=gpus,
        children_per_graph=len(want[0]),
        api=f"tests/cluster, Kubernetes {ctl.read_versions()['KUBERNETES_VERSION']}, admin kubeconfig",
    )
    print_tables(results)
    write_json("kube_apply", args, results)


def print_tables(r: dict) -> None:
    def trio(d: dict) -> str:
        return " / ".join(fmt(d[k], 0) for k in ("p50", "p90", "max"))

    head = ["milestone (ms from the apply request)"]
    cols = []
    if "serial" in r:
        head.append(f"(a) {r['serial']['graphs']} one at a time: p50 / p90 / max")
        cols.append(lambda m: trio(r["serial"]["milestones_ms"][m]))
    if "burst" in r:
        head.append(f"(b) {r['burst']['graphs']} at once: p50 / p90 / max")
        head.append("(b) all, from the first apply")
        cols.append(lambda m: trio(r["burst"]["milestones_ms"][m]))
        cols.append(lambda m: fmt(r["burst"]["all_by_ms"][m], 0))
    print(table(head, [[label, *(c(m) for c in cols)] for m, label in MILESTONES]))
    phases = [(k, r[k]) for k in ("serial", "burst") if k in r]
    if phases:
        names = list(phases[0][1]["cpu_s"])
        print()
        print(
            table(
                ["phase", "wall s", "load avg before", *(f"CPU s {n}" for n in names)],
                [
                    [
                        k,
                        fmt(p["wall_s"], 2),
                        fmt(p["loadavg_before"][0], 2),
                        *(fmt(p["cpu_s"][n], 2) for n in names),
                    ]
                    for k, p in phases
                ],
            )
        )


if __name__ == "__main__":
    main()
