"""charts/dynamo through the real Helm SDK (helm_python): lint, render, values schema."""

from __future__ import annotations

import helm_python as helm  # the real Helm Go SDK (helm-python-sdk)
import pytest
import yaml

from inference_graph.settings import FIXED, OperatorSettings

from .common import ROOT

CHART = ROOT / "charts" / "dynamo"
RELEASE, NAMESPACE = "dynamo", "dynamo-system"
BUILTIN_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1")

NON_DEFAULT = {
    "operator": {"watchNamespaceOnly": True, "logLevel": "DEBUG"},
    "image": {"repository": "registry.example/operator", "tag": "9.9.9"},
    "runtime": {"image": {"repository": "registry.example/runtime-cpu", "tag": "9.9.9"}, "gpuResource": ""},
    "nats": {"enabled": False, "externalUrl": "nats://nats.infra:4222"},
    "etcd": {"enabled": False, "externalEndpoints": ["http://etcd-0.infra:2379", "http://etcd-1.infra:2379"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "imagePullSecrets": [{"name": "regcred"}],
}


@pytest.fixture(scope="module")
def chart():
    return helm.Chart.load(str(CHART))


def render(chart, values=None) -> tuple[list[dict], str]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    notes = next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    return docs, notes


def find(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def operator_env(docs: list[dict]) -> dict[str, str]:
    (deployment,) = find(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in c["env"]}


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_lint_is_clean(values):
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_rendered_builtin_objects_are_valid(chart, values, strict_validate):
    docs, _ = render(chart, values)
    builtin = [d for d in docs if d["apiVersion"] in BUILTIN_GROUPS]
    assert builtin
    for doc in builtin:
        strict_validate(doc)
    assert {d["apiVersion"] for d in docs} - set(BUILTIN_GROUPS) <= {"monitoring.coreos.com/v1"}


def test_defaults_are_cluster_wide_with_bundled_nats_and_etcd(chart):
    docs, notes = render(chart)
    kinds = sorted(d["kind"] for d in docs)
    operator = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    nats = ["Service", "StatefulSet"]
    etcd = ["Service", "Service", "StatefulSet"]  # client + headless
    assert kinds == sorted([*operator, *nats, *etcd])
    env = operator_env(docs)
    assert env["IG_WATCH_NAMESPACE"] == ""
    assert env["IG_DEFAULT_NATS_SERVER"] == f"nats://dynamo-nats.{NAMESPACE}.svc:4222"
    assert env["IG_DEFAULT_ETCD_ENDPOINTS"] == f"http://dynamo-etcd.{NAMESPACE}.svc:2379"
    assert env["IG_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert env["IG_RUNTIME_IMAGE"] == "ghcr.io/inference-graph/runtime:0.1.0"  # appVersion as tag
    (deployment,) = find(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "inference_graph_operator"]
    assert c["image"] == "ghcr.io/inference-graph/operator:0.1.0"
    assert "kubectl apply" in notes and "kubectl get ig" in notes


def test_nats_has_jetstream_on_a_volume_claim(chart):
    docs, _ = render(chart)
    nats = next(s for s in find(docs, "StatefulSet") if s["metadata"]["name"] == "dynamo-nats")
    (c,) = nats["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["nats-server", "--jetstream"]
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert "--store_dir=/data" in c["command"]


def test_one_namespace_mode_with_external_infrastructure(chart):
    docs, notes = render(chart, NON_DEFAULT)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Role", "RoleBinding", "ServiceAccount", "ServiceMonitor"]
    for doc in find(docs, "Role") + find(docs, "RoleBinding"):
        assert doc["metadata"]["namespace"] == NAMESPACE
    env = operator_env(docs)
    assert env["IG_WATCH_NAMESPACE"] == NAMESPACE
    assert env["IG_DEFAULT_NATS_SERVER"] == "nats://nats.infra:4222"
    assert env["IG_DEFAULT_ETCD_ENDPOINTS"] == "http://etcd-0.infra:2379,http://etcd-1.infra:2379"
    assert env["IG_GPU_RESOURCE"] == ""
    assert env["IG_RUNTIME_IMAGE"] == "registry.example/runtime-cpu:9.9.9"
    assert "namespace dynamo-system only" in notes and "(external)" in notes


def test_rbac_is_least_privilege(chart):
    for values in (None, NON_DEFAULT):
        docs, _ = render(chart, values)
        (role,) = find(docs, "ClusterRole") + find(docs, "Role")
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert "secrets" not in resources and "*" not in resources
        pods = [rule["verbs"] for rule in role["rules"] if "pods" in rule["resources"]]
        assert pods == [["list", "watch"]]  # read only
        assert all("*" not in rule["verbs"] for rule in role["rules"])
        assert {
            "inferencegraphs",
            "inferencegraphs/status",
            "deployments",
            "configmaps",
            "services",
        } <= resources
        graph_verbs = next(
            rule["verbs"] for rule in role["rules"] if rule["resources"] == ["inferencegraphs"]
        )
        assert "delete" not in graph_verbs and "create" not in graph_verbs


def test_security_context_and_resources(chart):
    docs, _ = render(chart)
    for workload in find(docs, "Deployment") + find(docs, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]


def test_chart_ships_the_crds(chart):
    shipped = {crd["name"]: crd["data"] for crd in chart.crds}
    files = ("inferencegraph.yaml", "inferencegraphscaler.yaml")  # the graph, and its roles' scalers
    assert shipped == {f"crds/{name}": (ROOT / "crds" / name).read_text() for name in files}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"enabled": "yes"}}, "at '/nats/enabled': got string, want boolean"),
        ({"nats": {"enabled": False}}, "at '/nats/externalUrl': minLength"),
        ({"nats": {"enabled": False, "externalUrl": "http://x:4222"}}, "at '/nats/externalUrl'"),
        ({"etcd": {"enabled": False}}, "at '/etcd/externalEndpoints': minItems"),
        ({"operator": {"logLevel": "LOUD"}}, "at '/operator/logLevel': value must be one of"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"nats": {"jetstream": {"storage": "ten gigs"}}}, "at '/nats/jetstream/storage'"),
        ({"operater": {}}, "additional properties 'operater' not allowed"),
    ],
    ids=["type", "nats-external", "nats-scheme", "etcd-external", "enum", "pull-policy", "quantity", "typo"],
)
def test_values_schema_rejects_bad_values_naming_the_key(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    assert message in str(info.value)
    with pytest.raises(helm.HelmValuesError):  # and rendering (helm install/template) refuses them too
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_default_values_pass_the_schema(chart):
    chart.validate_schema(None)
    chart.validate_schema(NON_DEFAULT)


def test_grafana_dashboard_queries_the_frontends_metrics(chart):
    import json
    import re

    from prometheus_client import CollectorRegistry

    from inference_graph.roles.frontend.metrics import FrontendMetrics

    docs, _ = render(chart, {"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}})
    (configmap,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["inference-graph.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b(ig_frontend_[a-z_]+)", " ".join(exprs)))
    # every series a panel reads is one the frontend exports (histograms as _bucket, counters as _total)
    registry = CollectorRegistry()
    FrontendMetrics(registry)
    exported = {family.name for family in registry.collect() if family.type == "gauge"}
    exported |= {f"{family.name}_total" for family in registry.collect() if family.type == "counter"}
    exported |= {f"{family.name}_bucket" for family in registry.collect() if family.type == "histogram"}
    assert len(used) >= 8 and used <= exported, used - exported
    assert not find(render(chart)[0], "ConfigMap")  # off by default


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_the_chart_passes_the_operator_settings_by_their_names(chart, values):
    docs, _ = render(chart, values)
    env = operator_env(docs)
    assert set(env) <= set(OperatorSettings.names()), set(env) - set(OperatorSettings.names())
    settings = OperatorSettings.load(env)  # every value the chart passes parses
    assert settings.gpu_resource == env["IG_GPU_RESOURCE"]
    (deployment,) = find(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in c["ports"]] == [FIXED.operator_health_port]
