"""Rendering a graph into Kubernetes objects: pure, deterministic, valid, and wired as designed."""

from __future__ import annotations

import copy

import pytest
import yaml

from inference_graph.core.spec import Role, SpecError, load_graph, parse_graph
from inference_graph.settings import ENV_NAMES, FIXED
from inference_graph_operator.render import (
    MULTUS_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    OperatorDefaults,
    Owner,
    render,
)

from .common import CONFIGS

OWNER = Owner(name="g", uid="0b9f3a52-5d0e-4a53-9f1e-2f0c1d7c9e11", namespace="serving")
DEFAULTS = OperatorDefaults(
    image="registry.example/runtime:1.2.3",
    nats_url="nats://default-nats:4222",
    etcd_endpoints=("http://default-etcd:2379",),
)


# Keep a graph's workers on nodes of one RDMA fabric, and its decode replicas apart.
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "fabric", "operator": "In", "values": ["ib-a"]}]}
            ]
        }
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "decode"}},
                },
            }
        ]
    },
}


def full_manifest() -> dict:
    """A graph with every option set."""
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    worker = {
        "tensorParallelSize": 4,
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}},
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [gpu_taint],
        "affinity": AFFINITY,
    }
    return {
        "apiVersion": "inferencegraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "g"},
        "spec": {
            "model": {"name": "llama", "source": "pvc://models/llama-3-8b", "tokenizer": "pvc://models/tok"},
            "engine": {
                "type": "vllm",
                "blockSize": 64,
                "maxModelLen": 8192,
                "extraArgs": {"gpu_memory_utilization": 0.9},
            },
            "routing": {"strategy": "random"},
            "disaggregation": {"enabled": True},
            "services": {
                "frontend": {"replicas": 2, "port": 9000, "env": {"IG_LOG_LEVEL": "DEBUG"}},
                "processor": {"replicas": 3, "resources": {"requests": {"cpu": "2"}}},
                "decode": {**worker, "replicas": 2, "env": {"NATS_SERVER": "nats://user-nats:4222"}},
                "prefill": {**worker, "replicas": 4, "tensorParallelSize": 2, "env": {"POD_NAME": "fixed"}},
            },
            "infrastructure": {
                "nats": {"url": "nats://spec-nats:4222"},
                "etcd": {"endpoints": ["http://e1:2379", "http://e2:2379"]},
            },
        },
    }


def objects(manifest=None, defaults=DEFAULTS) -> list[dict]:
    return render(parse_graph(manifest or full_manifest()), OWNER, defaults)


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c["env"]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_object_of_every_config_is_valid(path, strict_validate):
    objs = render(load_graph(path), OWNER, DEFAULTS)
    assert objs
    for obj in objs:
        strict_validate(obj)


def test_every_object_of_a_full_graph_is_valid(strict_validate):
    objs = objects()
    # every role of full_manifest has 2 or more replicas: a PodDisruptionBudget each
    assert [o["kind"] for o in objs] == [
        "ConfigMap",
        *["Deployment"] * 4,
        "Service",
        *["PodDisruptionBudget"] * 4,
    ]
    for obj in objs:
        strict_validate(obj)


def test_rendering_is_deterministic_and_pure():
    manifest = full_manifest()
    first = objects(manifest)
    assert objects(copy.deepcopy(manifest)) == first
    assert manifest == full_manifest()  # input untouched


def test_one_deployment_per_desired_instance_with_its_command():
    deployments = by_kind(objects(), "Deployment")
    # From full_manifest, by hand: the four services with their replicas; workers of both kinds run
    # the worker module, each told its role.
    expected = {
        "frontend": (2, "inference_graph.roles.frontend"),
        "processor": (3, "inference_graph.roles.processor"),
        "decode": (2, "inference_graph.roles.worker"),
        "prefill": (4, "inference_graph.roles.worker"),
    }
    assert set(deployments) == {f"g-{role}" for role in expected}
    for role, (replicas, module) in expected.items():
        deployment = deployments[f"g-{role}"]
        assert deployment["spec"]["replicas"] == replicas
        assert container(deployment)["args"] == [
            "python", "-m", module, "--graph", "/etc/inference-graph/graph.yaml", "--role", role,
        ]  # fmt: skip
        assert container(deployment)["image"] == "registry.example/runtime:1.2.3"


def test_children_carry_owner_reference_namespace_and_labels():
    for obj in objects():
        meta = obj["metadata"]
        assert meta["namespace"] == "serving"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "inferencegraph.dev/v1alpha1",
                "kind": "InferenceGraph",
                "name": "g",
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/name"] == "inference-graph"
        assert meta["labels"]["app.kubernetes.io/instance"] == "g"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "dynamo"
    for name, deployment in by_kind(objects(), "Deployment").items():
        role = name.removeprefix("g-")
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert template_labels["app.kubernetes.io/component"] == role
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_configmap_holds_the_graph_mounted_where_the_command_reads_it():
    objs = objects()
    (configmap,) = by_kind(objs, "ConfigMap").values()
    assert configmap["metadata"]["name"] == "g-graph"
    graph = parse_graph(yaml.safe_load(configmap["data"]["graph.yaml"]))
    assert graph.spec == parse_graph(full_manifest()).spec
    assert graph.metadata.namespace == "serving"
    for deployment in by_kind(objs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v.get("configMap"))
        assert volume["configMap"]["name"] == "g-graph"
        mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True
        args = container(deployment)["args"]
        # the command's --graph is the ConfigMap's one key, under the mount
        assert (
            args[args.index("--graph") + 1]
            == mount["mountPath"] + "/graph.yaml"
            == "/etc/inference-graph/graph.yaml"
        )


def test_frontend_service_exposes_the_spec_port():
    objs = objects()
    service = by_kind(objs, "Service")["g-frontend"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}
    ]
    frontend = container(by_kind(objs, "Deployment")["g-frontend"])
    assert frontend["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert (
        service["spec"]["selector"]
        == by_kind(objs, "Deployment")["g-frontend"]["spec"]["selector"]["matchLabels"]
    )


def test_env_precedence_operator_then_spec_then_user():
    deployments = by_kind(objects(), "Deployment")
    frontend = env_of(container(deployments["g-frontend"]))
    assert frontend["NATS_SERVER"]["value"] == "nats://spec-nats:4222"  # spec over operator default
    assert frontend["ETCD_ENDPOINTS"]["value"] == "http://e1:2379,http://e2:2379"
    assert frontend["IG_LOG_LEVEL"]["value"] == "DEBUG"
    decode = env_of(container(deployments["g-decode"]))
    assert decode["NATS_SERVER"]["value"] == "nats://user-nats:4222"  # user env over spec
    agg = by_kind(render(load_graph(CONFIGS[0]), OWNER, DEFAULTS), "Deployment")
    agg_env = env_of(container(agg[f"{load_graph(CONFIGS[0]).metadata.name}-decode"]))
    assert agg_env["NATS_SERVER"]["value"] == "nats://default-nats:4222"  # operator default
    assert agg_env["ETCD_ENDPOINTS"]["value"] == "http://default-etcd:2379"


def test_pod_identity_comes_from_the_downward_api_unless_the_user_set_it():
    deployments = by_kind(objects(), "Deployment")
    for name, deployment in deployments.items():
        env = env_of(container(deployment))
        assert len(env) == len(container(deployment)["env"]), f"{name}: duplicate env names"
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert env["IG_NAMESPACE"]["value"] == "g"
        if name == "g-prefill":
            assert env["POD_NAME"] == {"name": "POD_NAME", "value": "fixed"}
        else:
            assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_gpu_limit_equals_tensor_parallel_size_for_workers_only():
    deployments = by_kind(objects(), "Deployment")
    assert container(deployments["g-decode"])["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container(deployments["g-prefill"])["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container(deployments["g-decode"])["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert "limits" not in container(deployments["g-processor"])["resources"]
    assert "resources" not in container(deployments["g-frontend"])


def test_gpu_resource_name_is_configurable_and_can_be_off():
    amd = by_kind(objects(defaults=OperatorDefaults(gpu_resource="amd.com/gpu")), "Deployment")
    assert container(amd["g-decode"])["resources"]["limits"] == {"memory": "64Gi", "amd.com/gpu": "4"}
    cpu = by_kind(objects(defaults=OperatorDefaults(gpu_resource="")), "Deployment")
    assert container(cpu["g-decode"])["resources"]["limits"] == {"memory": "64Gi"}


def test_gpu_request_given_by_the_user_is_kept_equal_to_the_limit():
    manifest = full_manifest()
    manifest["spec"]["services"]["decode"]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    decode = container(by_kind(objects(manifest), "Deployment")["g-decode"])
    assert (
        decode["resources"]["requests"]["nvidia.com/gpu"]
        == decode["resources"]["limits"]["nvidia.com/gpu"]
        == "4"
    )


def test_placement_comes_from_the_spec():
    deployments = by_kind(objects(), "Deployment")
    pod = deployments["g-decode"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == AFFINITY
    frontend_pod = deployments["g-frontend"]["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity"} & set(frontend_pod)


def test_probes():
    deployments = by_kind(objects(), "Deployment")
    frontend = container(deployments["g-frontend"])
    assert frontend["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert frontend["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert frontend["startupProbe"]["httpGet"]["path"] == "/live"
    for role in ("processor", "decode", "prefill"):
        c = container(deployments[f"g-{role}"])
        probe = ["python", "-m", "inference_graph_operator.probe", "--role", role]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[kind]["exec"]["command"] == probe
    decode = container(deployments["g-decode"])
    budget = decode["startupProbe"]["periodSeconds"] * decode["startupProbe"]["failureThreshold"]
    assert budget >= 600  # model load can take minutes; liveness only starts after startup succeeds


def test_graceful_termination_covers_the_drain():
    for deployment in by_kind(objects(), "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > FIXED.drain_seconds + pre_stop


def test_pods_run_as_non_root_without_privileges():
    for deployment in by_kind(objects(), "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        c = container(deployment)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_pvc_model_source_is_mounted_for_roles_that_load_the_model():
    deployments = by_kind(objects(), "Deployment")
    for role in ("processor", "decode", "prefill"):
        pod = deployments[f"g-{role}"]["spec"]["template"]["spec"]
        assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
            "volumes"
        ]
    frontend_volumes = deployments["g-frontend"]["spec"]["template"]["spec"]["volumes"]
    assert all(v["name"] != "model" for v in frontend_volumes)


def _hashes(manifest: dict) -> dict[str, str]:
    return {
        name: d["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for name, d in by_kind(objects(manifest), "Deployment").items()
    }


def test_scaling_changes_no_pod_template():
    before = _hashes(full_manifest())
    manifest = full_manifest()
    manifest["spec"]["services"]["decode"]["replicas"] = 7
    manifest["spec"]["services"]["frontend"]["replicas"] = 1
    assert _hashes(manifest) == before


def test_a_role_change_rolls_only_that_role():
    before = _hashes(full_manifest())
    manifest = full_manifest()
    manifest["spec"]["services"]["decode"]["env"]["EXTRA"] = "1"
    after = _hashes(manifest)
    assert {name for name in before if before[name] != after[name]} == {"g-decode"}


def test_a_shared_change_rolls_every_role():
    before = _hashes(full_manifest())
    manifest = full_manifest()
    manifest["spec"]["engine"]["maxModelLen"] = 4096
    after = _hashes(manifest)
    assert all(before[name] != after[name] for name in before)


def test_operator_defaults_from_the_chart_env():
    defaults = OperatorDefaults.from_env(
        {
            "IG_RUNTIME_IMAGE": "r/img:9",
            "IG_DEFAULT_NATS_SERVER": "nats://n:4222",
            "IG_DEFAULT_ETCD_ENDPOINTS": "http://a:2379, http://b:2379",
            "IG_GPU_RESOURCE": "",
            "IG_PART_OF": "my-release",
        }
    )
    assert defaults.image == "r/img:9"
    assert defaults.infrastructure_env() == {
        "NATS_SERVER": "nats://n:4222",
        "ETCD_ENDPOINTS": "http://a:2379,http://b:2379",
    }
    assert defaults.gpu_resource == ""
    assert defaults.part_of == "my-release"
    assert OperatorDefaults.from_env({}) == OperatorDefaults()


def test_prefill_only_when_present():
    objs = render(load_graph(CONFIGS[0]), OWNER, DEFAULTS)
    roles = {
        d["metadata"]["labels"]["app.kubernetes.io/component"] for d in objs if d["kind"] == "Deployment"
    }
    assert Role.PREFILL.value not in roles


def test_frontend_without_a_port_listens_on_8000():
    manifest = full_manifest()
    del manifest["spec"]["services"]["frontend"]["port"]
    objs = objects(manifest)
    frontend = container(by_kind(objs, "Deployment")["g-frontend"])
    assert frontend["ports"][0]["containerPort"] == 8000
    assert by_kind(objs, "Service")["g-frontend"]["spec"]["ports"][0]["port"] == 8000


# ---------------------------------------------------------------- RDMA preset


def rdma_manifest(**rdma) -> dict:
    manifest = full_manifest()
    manifest["spec"]["services"]["prefill"]["rdma"] = {"enabled": True, **rdma}
    return manifest


def test_rdma_preset_is_off_by_default():
    for deployment in by_kind(objects(), "Deployment").values():
        c = container(deployment)
        assert "add" not in c["securityContext"]["capabilities"]
        assert not [e for e in c["env"] if e["name"].startswith("UCX_")]
        assert "rdma/ib" not in c.get("resources", {}).get("limits", {})
        assert MULTUS_ANNOTATION not in deployment["spec"]["template"]["metadata"]["annotations"]


def test_rdma_preset_renders_device_capabilities_shm_networks_and_ucx_env(strict_validate):
    manifest = rdma_manifest(networks=["rdma-net", "fabric/ib-1@net1"], roce=True)
    deployments = by_kind(objects(manifest), "Deployment")
    prefill = deployments["g-prefill"]
    strict_validate(prefill)
    c = container(prefill)
    assert c["resources"]["limits"]["rdma/ib"] == "1"
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK", "SYS_RESOURCE"]}
    pod = prefill["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    annotations = prefill["spec"]["template"]["metadata"]["annotations"]
    assert annotations[MULTUS_ANNOTATION] == "rdma-net,fabric/ib-1@net1"
    env = {k: v["value"] for k, v in env_of(c).items() if k.startswith("UCX_")}
    assert env == {
        "UCX_TLS": "rc,ud,sm,self",  # no tcp: a missing RDMA device fails instead of falling back
        "UCX_RNDV_SCHEME": "get_zcopy",
        "UCX_RNDV_THRESH": "0",
        "UCX_IB_ADDR_TYPE": "eth",
    }
    decode = container(deployments["g-decode"])  # the preset is per role
    assert "rdma/ib" not in decode["resources"]["limits"]
    assert "add" not in decode["securityContext"]["capabilities"]


def test_rdma_settings_resource_count_shm_and_gpu_transports():
    manifest = rdma_manifest(resource="rdma/rdma_shared_device_a", count=2, shmSize="16Gi")
    manifest["spec"]["disaggregation"]["kvTransfer"] = {"bufferDevice": "cuda"}
    manifest["spec"]["services"]["prefill"]["resources"]["requests"]["rdma/rdma_shared_device_a"] = "9"
    prefill = by_kind(objects(manifest), "Deployment")["g-prefill"]
    c = container(prefill)
    assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == "2"
    assert c["resources"]["requests"]["rdma/rdma_shared_device_a"] == "2"  # extended: request == limit
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"  # the GPU request is untouched
    volumes = prefill["spec"]["template"]["spec"]["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in volumes
    assert env_of(c)["UCX_TLS"]["value"] == "rc,ud,sm,self,cuda_copy,cuda_ipc"
    assert "UCX_IB_ADDR_TYPE" not in env_of(c)  # InfiniBand, not RoCE


def test_rdma_ucx_env_overrides_the_preset_and_role_env_wins_over_both():
    manifest = rdma_manifest(ucxEnv={"UCX_TLS": "rc_x,sm,self", "UCX_NET_DEVICES": "mlx5_0:1"})
    manifest["spec"]["services"]["prefill"]["env"]["UCX_NET_DEVICES"] = "mlx5_1:1"
    env = env_of(container(by_kind(objects(manifest), "Deployment")["g-prefill"]))
    assert env["UCX_TLS"]["value"] == "rc_x,sm,self"
    assert env["UCX_NET_DEVICES"]["value"] == "mlx5_1:1"
    assert env["UCX_RNDV_SCHEME"]["value"] == "get_zcopy"


def test_rdma_on_a_role_without_shm_gets_one():
    manifest = full_manifest()
    manifest["spec"]["services"]["processor"]["rdma"] = {"enabled": True, "shmSize": "1Gi"}
    processor = by_kind(objects(manifest), "Deployment")["g-processor"]
    volumes = processor["spec"]["template"]["spec"]["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in volumes


def test_enabling_rdma_rolls_only_that_role():
    before = _hashes(full_manifest())
    after = _hashes(rdma_manifest())
    assert {name for name in before if before[name] != after[name]} == {"g-prefill"}


@pytest.mark.parametrize(
    ("rdma", "field"),
    [
        ({"ucxEnv": {"NCCL_DEBUG": "INFO"}}, "ucxEnv"),
        ({"count": 0}, "count"),
        ({"shmSize": "lots"}, "shmSize"),
        ({"networks": ["Bad Net"]}, "networks"),
        ({"resource": "ib"}, "resource"),
    ],
)
def test_bad_rdma_settings_name_the_field(rdma, field):
    with pytest.raises(SpecError) as err:
        parse_graph(rdma_manifest(**rdma))
    assert err.value.field.startswith(f"spec.services.prefill.rdma.{field}")


def test_replicas_decided_by_the_operator_override_the_spec_without_rolling():
    graph = parse_graph(full_manifest())
    objs = render(graph, OWNER, DEFAULTS, replicas={Role.DECODE: 5})
    deployments = by_kind(objs, "Deployment")
    assert deployments["g-decode"]["spec"]["replicas"] == 5
    assert deployments["g-prefill"]["spec"]["replicas"] == 4  # not given: the spec's
    assert _hashes(full_manifest()) == {
        n: d["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for n, d in deployments.items()
    }


def test_every_role_rolls_with_surge_and_never_below_its_replicas():
    for name, deployment in by_kind(objects(), "Deployment").items():
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }, name


def test_a_role_may_roll_without_surge_and_that_choice_rolls_nothing():
    before = _hashes(full_manifest())
    manifest = full_manifest()
    manifest["spec"]["services"]["decode"]["rollout"] = {"maxSurge": 0, "maxUnavailable": 1}
    deployments = by_kind(objects(manifest), "Deployment")
    assert deployments["g-decode"]["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 0,
        "maxUnavailable": 1,
    }
    assert deployments["g-prefill"]["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 1,
        "maxUnavailable": 0,
    }
    assert _hashes(manifest) == before  # the new strategy applies to the next change; no restart now
    manifest["spec"]["services"]["decode"]["rollout"] = {"maxSurge": 0, "maxUnavailable": 0}
    with pytest.raises(SpecError, match="must not both be 0"):
        parse_graph(manifest)


def test_a_disruption_budget_per_role_with_two_or_more_replicas():
    manifest = full_manifest()
    manifest["spec"]["services"]["frontend"]["replicas"] = 1
    objs = objects(manifest)
    budgets = by_kind(objs, "PodDisruptionBudget")
    # frontend 1 replica: none; processor 3, decode 2, prefill 4: one each
    assert sorted(budgets) == ["g-decode", "g-prefill", "g-processor"]
    decode = budgets["g-decode"]
    assert decode["apiVersion"] == "policy/v1"
    assert decode["metadata"]["namespace"] == "serving"
    assert decode["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert decode["metadata"]["labels"]["app.kubernetes.io/component"] == "decode"
    assert decode["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "inference-graph",
                "app.kubernetes.io/instance": "g",
                "app.kubernetes.io/component": "decode",
            }
        },
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    # the budget selects exactly the role's pods
    pods = by_kind(objs, "Deployment")["g-decode"]["spec"]["template"]["metadata"]["labels"]
    assert decode["spec"]["selector"]["matchLabels"].items() <= pods.items()


def test_disruption_budgets_follow_the_replicas_the_operator_decides():
    graph = parse_graph(full_manifest())
    objs = render(graph, OWNER, DEFAULTS, replicas={Role.DECODE: 1, Role.FRONTEND: 1})
    assert sorted(by_kind(objs, "PodDisruptionBudget")) == ["g-prefill", "g-processor"]


def test_every_env_name_the_operator_injects_is_a_settings_name():
    manifest = rdma_manifest(roce=True)
    manifest["spec"]["services"]["prefill"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 3,
    }
    manifest["spec"]["planner"] = {"policy": "load"}  # so the planner's IG_FRONTEND_URL is rendered too
    injected = {
        e["name"]
        for deployment in by_kind(objects(manifest), "Deployment").values()
        for e in container(deployment)["env"]
    }
    assert "IG_FRONTEND_URL" in injected and "UCX_IB_ADDR_TYPE" in injected
    assert injected <= set(ENV_NAMES), injected - set(ENV_NAMES)
