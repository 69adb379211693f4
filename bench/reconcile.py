"""Reconcile latency of the operator: apply → all children present, for 1 and for 100 graphs.

On the local control plane of tests/cluster (kube-apiserver, controller-manager, scheduler, kwok's
fake GPU nodes; started for the run in its own directory, the binaries built once), with the real
operator as a subprocess (``python -m inference_graph_operator``, kopf and the official client,
the admin's credentials) and the pinned kubectl applying the CRDs. Each graph is
``--config`` (default configs/agg_router.yaml: a ConfigMap, four Deployments, a Service)
under its own name, created with one POST per graph in a burst (what ``kubectl apply -f``
of a multi-document file does, without kubectl's per-object discovery cost).

Per graph: the time from its POST's response to the first poll (every ``--poll-ms``) that
finds all of its children, and to the first poll that finds its status written
(``observedGeneration`` 1). Per run: the time from the first POST to the last graph
complete. The operator runs warm: a warm-up graph is reconciled before timing starts.
The API server, etcd, the controllers and kwok share the machine's cores with the operator and
the poller; the CPU columns are the operator's, the API server's, and this process's (poller).

    .venv/bin/python bench/reconcile.py                 # 1 and 100 graphs
    .venv/bin/python bench/reconcile.py --graphs 1,10   # other sizes

Output: a table on stdout, JSON in bench/results/reconcile-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from harness import RESULTS, ROOT, cpu_seconds, fmt, output_args, pct, table, write_json

sys.path.insert(0, str(ROOT / "tests"))
from cluster import cluster as ctl  # tests/cluster/cluster.py

SELECTOR = "app.kubernetes.io/managed-by=inference-graph-operator"
CHILD_LISTS = (
    "/api/v1/namespaces/{ns}/configmaps",
    "/api/v1/namespaces/{ns}/services",
    "/apis/apps/v1/namespaces/{ns}/deployments",
)
GRAPHS = "/apis/inferencegraph.dev/v1alpha1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", default="1,100", help="comma-separated graph counts, one run each")
    p.add_argument("--config", default=str(ROOT / "configs" / "agg_router.yaml"))
    p.add_argument("--poll-ms", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    output_args(p)
    return p.parse_args(argv)


TLS: ssl.SSLContext | None = None  # the cluster's CA and the admin's client certificate


def request(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30, context=TLS) as response:
        return json.loads(response.read())


def children_by_graph(url: str, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in CHILD_LISTS:
        for item in request(f"{url}{path.format(ns=namespace)}?labelSelector={SELECTOR}")["items"]:
            graph = item["metadata"]["labels"]["app.kubernetes.io/instance"]
            counts[graph] = counts.get(graph, 0) + 1
    return counts


def graphs_with_status(url: str, namespace: str) -> set[str]:
    items = request(f"{url}{GRAPHS}/namespaces/{namespace}/inferencegraphs")["items"]
    return {i["metadata"]["name"] for i in items if (i.get("status") or {}).get("observedGeneration") == 1}


def graph_manifest(template: dict, name: str, namespace: str) -> dict:
    manifest = json.loads(json.dumps(template))
    manifest["metadata"] = {"name": name, "namespace": namespace}
    return manifest


def expected_children(template: dict) -> int:
    from inference_graph.core.spec import parse_graph
    from inference_graph_operator.render import Owner, render

    objs = render(parse_graph(graph_manifest(template, "x", "default")), Owner("x", "uid"))
    return sum(o["kind"] in ("ConfigMap", "Service", "Deployment") for o in objs)  # what CHILD_LISTS list


def run(
    url: str,
    template: dict,
    count: int,
    namespace: str,
    args: argparse.Namespace,
    operator_pid: int,
    apiserver_pid: int,
) -> dict:
    request(
        f"{url}/api/v1/namespaces",
        "POST",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    want = expected_children(template)
    names = [f"g{i:03d}" for i in range(count)]
    applied: dict[str, float] = {}
    cpu_before = cpu_seconds(operator_pid), cpu_seconds(apiserver_pid), time.process_time()
    start = time.perf_counter()
    for name in names:
        request(
            f"{url}{GRAPHS}/namespaces/{namespace}/inferencegraphs",
            "POST",
            graph_manifest(template, name, namespace),
        )
        applied[name] = time.perf_counter()
    children_done: dict[str, float] = {}
    status_done: dict[str, float] = {}
    deadline = start + args.timeout
    while len(status_done) < count or len(children_done) < count:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{count} graphs: only {len(children_done)} complete after {args.timeout} s")
        now = time.perf_counter()
        counts = children_by_graph(url, namespace)
        for name in names:
            if name not in children_done and counts.get(name, 0) >= want:
                children_done[name] = now
        for name in graphs_with_status(url, namespace) - status_done.keys():
            status_done[name] = now
        time.sleep(args.poll_ms / 1000)  # polling interval of the observer, not synchronisation
    operator_cpu, apiserver_cpu, poller_cpu = (
        cpu_seconds(operator_pid) - cpu_before[0],
        cpu_seconds(apiserver_pid) - cpu_before[1],
        time.process_time() - cpu_before[2],
    )
    children = [1000 * (children_done[n] - applied[n]) for n in names]
    status = [1000 * (status_done[n] - applied[n]) for n in names]
    return {
        "graphs": count,
        "children_per_graph": want,
        "apply_ms": 1000 * (applied[names[-1]] - start),
        "all_children_ms": 1000 * (max(children_done.values()) - start),
        "all_status_ms": 1000 * (max(status_done.values()) - start),
        "children_ms": summary(children),
        "status_ms": summary(status),
        "operator_cpu_s": operator_cpu,
        "apiserver_cpu_s": apiserver_cpu,
        "poller_cpu_s": poller_cpu,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "max": max(values)}


def start_operator(config: Path, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "KUBECONFIG": str(config),
        "IG_OPERATOR_LIVENESS": "",
        "IG_OPERATOR_LOG_LEVEL": "WARNING",
    }
    log = log_path.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "inference_graph_operator"], env=env, stdout=log, stderr=log
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    template = next(
        d
        for d in yaml.safe_load_all(Path(args.config).read_text())
        if d and d.get("kind") == "InferenceGraph"
    )
    counts = [int(c) for c in args.graphs.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    global TLS
    with tempfile.TemporaryDirectory() as tmp:
        cluster = ctl.Cluster(ctl.build(), Path(tmp))
        try:
            cluster.up(nodes=4)
            pki = Path(cluster.state["tmp"]) / "pki"
            TLS = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            TLS.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
            url = f"https://127.0.0.1:{cluster.state['ports']['apiserver']}"
            cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
            apiserver = cluster.state["processes"]["kube-apiserver"]
            operator = start_operator(cluster.kubeconfig, RESULTS / f"reconcile-{stamp}-operator.log")
            try:
                # imports, login, watches established
                warmup = run(url, template, 1, "warmup", args, operator.pid, apiserver)
                rows = [
                    run(url, template, count, f"bench-{count}", args, operator.pid, apiserver)
                    for count in counts
                ]
            finally:
                operator.terminate()
                operator.wait(timeout=30)
        finally:
            ctl.stop(cluster.state, quiet=True)
    print_table(rows)
    api = f"the local control plane of tests/cluster (Kubernetes {ctl.read_versions()['KUBERNETES_VERSION']})"
    write_json("reconcile", args, {"api": api, "warmup": warmup, "runs": rows})


def print_table(rows: list[dict]) -> None:
    head = ["graphs", "children", "apply ms", "all children ms", "all status ms", "children p50/p95/max ms"]
    head += ["status p50/p95/max ms", "CPU s operator / API server / poller"]

    def spread(d: dict) -> str:
        return " / ".join(fmt(d[k], 0) for k in ("p50", "p95", "max"))

    body = [
        [
            r["graphs"],
            r["graphs"] * r["children_per_graph"],
            fmt(r["apply_ms"], 0),
            fmt(r["all_children_ms"], 0),
            fmt(r["all_status_ms"], 0),
            spread(r["children_ms"]),
            spread(r["status_ms"]),
            f"{r['operator_cpu_s']:.2f} / {r['apiserver_cpu_s']:.2f} / {r['poller_cpu_s']:.2f}",
        ]
        for r in rows
    ]
    print(table(head, body))


if __name__ == "__main__":
    main()
