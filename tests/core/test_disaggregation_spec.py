"""disaggregation.*: defaults, validation naming the field, mixed TP between prefill and decode."""

import pytest

from inference_graph.core.instances import desired_instances
from inference_graph.core.spec import KvBufferDevice, Role, SpecError, parse_graph


def graph(**spec) -> dict:
    return {
        "apiVersion": "inferencegraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "g"},
        "spec": {"model": {"name": "m", "source": "builtin://tiny-llama"}, **spec},
    }


def test_defaults_follow_the_seeds():
    disagg = parse_graph(graph()).spec.disaggregation
    assert disagg.enabled is False
    assert disagg.conditional.max_local_prefill_length == 1000
    assert disagg.conditional.max_prefill_queue_size == 2
    assert disagg.kv_transfer.connector == "nixl"
    assert disagg.kv_transfer.buffer_device is KvBufferDevice.CPU
    assert disagg.kv_transfer.simulated.kv_bytes_per_token is None
    assert disagg.queue.max_deliver == 3


def test_camel_case_fields_parse():
    spec = parse_graph(
        graph(
            disaggregation={
                "enabled": True,
                "conditional": {"maxLocalPrefillLength": 64, "maxPrefillQueueSize": 8},
                "kvTransfer": {
                    "bufferDevice": "cuda",
                    "simulated": {"bandwidthGbps": 50, "kvBytesPerToken": 4096},
                },
                "queue": {"ackWaitSeconds": 5, "maxDeliver": 2, "remoteTimeoutSeconds": 12},
            },
            services={"prefill": {"replicas": 2}},
        )
    ).spec
    assert spec.disaggregation.conditional.max_prefill_queue_size == 8
    assert spec.disaggregation.kv_transfer.simulated.bandwidth_gbps == 50
    assert spec.disaggregation.queue.remote_timeout_seconds == 12
    assert spec.services.prefill.replicas == 2


@pytest.mark.parametrize(
    ("disagg", "field"),
    [
        (
            {"conditional": {"maxLocalPrefillLength": -1}},
            "spec.disaggregation.conditional.maxLocalPrefillLength",
        ),
        ({"conditional": {"maxPrefillQueueSize": 0}}, "spec.disaggregation.conditional.maxPrefillQueueSize"),
        ({"kvTransfer": {"connector": "lmcache"}}, "spec.disaggregation.kvTransfer.connector"),
        (
            {"kvTransfer": {"simulated": {"bandwidthGbps": 0}}},
            "spec.disaggregation.kvTransfer.simulated.bandwidthGbps",
        ),
        ({"queue": {"maxDeliver": 0}}, "spec.disaggregation.queue.maxDeliver"),
        ({"queue": {"ackWaitSeconds": 0}}, "spec.disaggregation.queue.ackWaitSeconds"),
    ],
)
def test_bad_settings_name_the_field(disagg, field):
    with pytest.raises(SpecError) as info:
        parse_graph(graph(disaggregation={"enabled": True, **disagg}))
    assert info.value.field == field


def test_mixed_tensor_parallelism_is_allowed_and_sized_per_role():
    manifest = graph(
        disaggregation={"enabled": True},
        services={"prefill": {"replicas": 1, "tensorParallelSize": 4}, "decode": {"tensorParallelSize": 2}},
    )
    instances = {i.role: i for i in desired_instances(parse_graph(manifest), "/g.yaml", {})}
    assert instances[Role.PREFILL].gpus == 4
    assert instances[Role.DECODE].gpus == 2
