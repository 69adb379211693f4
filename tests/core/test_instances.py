"""desired_instances: the one function both runtimes use to decide what runs."""

from inference_graph.core.instances import desired_instances
from inference_graph.core.spec import Role, parse_graph
from inference_graph.settings import Env

INFRA = {Env.NATS_SERVER: "nats://default:4222", Env.ETCD_ENDPOINTS: "http://default:2379"}


def graph(**spec):
    return parse_graph(
        {
            "apiVersion": "inferencegraph.dev/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": "g"},
            "spec": {"model": {"name": "m", "source": "builtin://tiny-llama"}, **spec},
        }
    )


def by_role(instances):
    return {i.role: i for i in instances}


def test_aggregated_graph_runs_frontend_processor_decode():
    instances = by_role(desired_instances(graph(), "/g.yaml", INFRA))
    assert set(instances) == {Role.FRONTEND, Role.PROCESSOR, Role.DECODE}
    decode = instances[Role.DECODE]
    assert decode.module == "inference_graph.roles.worker"
    assert decode.args == ("--graph", "/g.yaml", "--role", "decode")
    assert decode.argv("py")[:3] == ["py", "-m", "inference_graph.roles.worker"]
    assert instances[Role.FRONTEND].port == 8000


def test_gpus_follow_tensor_parallel_size_for_workers_only():
    g = graph(services={"decode": {"tensorParallelSize": 4}, "processor": {"tensorParallelSize": 2}})
    instances = by_role(desired_instances(g, "/g.yaml", INFRA))
    assert instances[Role.DECODE].gpus == 4
    assert instances[Role.PROCESSOR].gpus == 0


def test_simulated_workers_request_no_gpus():
    g = graph(engine={"type": "mocker"}, services={"decode": {"tensorParallelSize": 4}})
    assert by_role(desired_instances(g, "/g.yaml", INFRA))[Role.DECODE].gpus == 0


def test_spec_endpoints_override_runtime_defaults_and_user_env_wins():
    g = graph(
        infrastructure={
            "nats": {"url": "nats://spec:4222"},
            "etcd": {"endpoints": ["http://a:2379", "http://b:2379"]},
        },
        services={"decode": {"env": {Env.NATS_SERVER: "nats://user:4222"}}},
    )
    instances = by_role(desired_instances(g, "/g.yaml", INFRA))
    assert instances[Role.PROCESSOR].env[Env.NATS_SERVER] == "nats://spec:4222"
    assert instances[Role.PROCESSOR].env[Env.ETCD_ENDPOINTS] == "http://a:2379,http://b:2379"
    assert instances[Role.DECODE].env[Env.NATS_SERVER] == "nats://user:4222"


def test_replicas_are_passed_through():
    g = graph(services={"decode": {"replicas": 3}, "processor": {"replicas": 0}})
    instances = by_role(desired_instances(g, "/g.yaml", INFRA))
    assert instances[Role.DECODE].replicas == 3
    assert instances[Role.PROCESSOR].replicas == 0


def test_kv_routing_runs_the_router_role():
    g = graph(routing={"strategy": "kv"}, services={"router": {"replicas": 2}})
    router = by_role(desired_instances(g, "/g.yaml", INFRA))[Role.ROUTER]
    assert router.module == "inference_graph.roles.router"
    assert router.replicas == 2
    assert router.args == ("--graph", "/g.yaml", "--role", "router")
    assert router.gpus == 0
