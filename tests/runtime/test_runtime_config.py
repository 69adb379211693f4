import pytest

from inference_graph.runtime.config import ConfigError, RuntimeConfig


def test_defaults():
    cfg = RuntimeConfig.from_env({})
    assert cfg.nats_url == "nats://127.0.0.1:4222"
    assert cfg.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert cfg.namespace == "default"
    assert cfg.lease_ttl == 10.0


def test_values_and_round_trip():
    env = {
        "NATS_SERVER": "nats://nats.ig:4222",
        "ETCD_ENDPOINTS": "etcd-0:2379, http://etcd-1:2379/",
        "IG_NAMESPACE": "my-graph",
        "IG_LEASE_TTL": "4.5",
    }
    cfg = RuntimeConfig.from_env(env)
    assert cfg.etcd_endpoints == ["http://etcd-0:2379", "http://etcd-1:2379"]
    assert cfg.namespace == "my-graph" and cfg.lease_ttl == 4.5
    assert RuntimeConfig.from_env(cfg.to_env()) == cfg


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NATS_SERVER", "http://x:4222"),
        ("NATS_SERVER", "nats://x:notaport"),
        ("ETCD_ENDPOINTS", "grpc://x:2379"),
        ("ETCD_ENDPOINTS", " , "),
        ("IG_NAMESPACE", "a.b"),
        ("IG_LEASE_TTL", "ten"),
        ("IG_LEASE_TTL", "0.5"),
        ("IG_LEASE_TTL", "inf"),
    ],
)
def test_bad_values_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable) as info:
        RuntimeConfig.from_env({variable: value})
    assert info.value.variable == variable and info.value.value == value
