"""Disaggregated decode and prefill worker instances in one process, on simulated engines, over a
real NATS (JetStream prefill queue) and etcd (discovery): the conditional rule, the flow, fallbacks."""

from __future__ import annotations

import asyncio

import pytest

from inference_graph import wire
from inference_graph.core.spec import Role, parse_graph
from inference_graph.engines.factory import create_engine
from inference_graph.engines.kv_transfer import KvTransferError
from inference_graph.roles.bootstrap import RoleContext
from inference_graph.roles.worker.service import WorkerInstance
from inference_graph.runtime.config import RuntimeConfig
from support import eventually

BS = 16


def graph(namespace: str, model_dir: str, speedup: float = 20, **disagg):
    return parse_graph(
        {
            "apiVersion": "inferencegraph.dev/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": namespace},
            "spec": {
                "model": {"name": "m", "source": model_dir},
                "engine": {
                    "type": "mocker",
                    "blockSize": BS,
                    "maxModelLen": 4096,
                    "mocker": {"timing": "polynomial", "speedup": speedup},
                },
                "disaggregation": {
                    "enabled": True,
                    "conditional": {"maxLocalPrefillLength": 100, "maxPrefillQueueSize": 8},
                    "kvTransfer": {"simulated": {"kvBytesPerToken": 1000}},
                    "queue": {"ackWaitSeconds": 1, "remoteTimeoutSeconds": 10},
                    **disagg,
                },
                "services": {"prefill": {"replicas": 1}},
            },
        }
    )


class Cluster:
    """Worker instances sharing one NATS connection and one etcd client, like a packed process."""

    def __init__(self, nc, discovery, nats_server, etcd_server, graph):
        self.nc, self.discovery, self.graph = nc, discovery, graph
        self.config = RuntimeConfig(
            nats_url=nats_server.url, etcd_endpoints=etcd_server.endpoints, namespace=graph.metadata.name
        )
        self.instances: list[WorkerInstance] = []

    async def add(self, role: Role, name: str) -> WorkerInstance:
        spec = self.graph.spec
        engine = create_engine(
            spec.engine,
            spec.model.source,
            "m",
            spec.disaggregation.kv_transfer,
            kv_producer=role == Role.PREFILL,
        )
        await engine.start()
        ctx = RoleContext(self.graph, role, self.config, name, self.nc, self.discovery, asyncio.Event())
        instance = WorkerInstance(ctx, engine, name)
        await instance.start()
        self.instances.append(instance)
        return instance

    async def stop(self, instance: WorkerInstance) -> None:
        self.instances.remove(instance)
        await instance.drain()

    async def close(self):
        for instance in list(self.instances):  # a failed drain fails the test: nothing is suppressed
            await self.stop(instance)


@pytest.fixture
async def cluster(nc, discovery, nats_server, etcd_server, namespace, model_dir):
    made = []

    async def make(speedup: float = 20, **disagg) -> Cluster:
        manifest = graph(namespace, model_dir, speedup, **disagg)
        made.append(Cluster(nc, discovery, nats_server, etcd_server, manifest))
        return made[-1]

    yield make
    for c in made:
        await c.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    import json

    root = tmp_path_factory.mktemp("fake-model")
    (root / "config.json").write_text(json.dumps({"vocab_size": 512, "eos_token_id": 2, "bos_token_id": 1}))
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [2]}))
    (root / "tokenizer.json").write_text(json.dumps({"added_tokens": []}))
    return str(root)


def request(rid: str, length: int, max_tokens: int = 4, start: int = 10) -> wire.GenerateRequest:
    prompt = [start + i % 400 for i in range(length)]
    return wire.GenerateRequest(rid, prompt, wire.SamplingOptions(max_tokens=max_tokens, ignore_eos=True))


async def collect(decode: WorkerInstance, req: wire.GenerateRequest) -> list[int]:
    target = decode._disagg.decode
    return [t async for out in target.generate(req) for t in out.token_ids]


async def test_long_prompts_go_remote_short_ones_stay_local(cluster):
    c = await cluster()
    prefill = await c.add(Role.PREFILL, "prefill-1")
    decode = await c.add(Role.DECODE, "decode-1")
    counters = decode._disagg.decode.counters
    await eventually(lambda: decode._disagg._prefill_watch.instances, timeout=10)

    assert len(await collect(decode, request("short", 50))) == 4
    assert (counters.local_prefills, counters.remote_prefills) == (1, 0)
    assert len(await collect(decode, request("long", 600))) == 4
    assert (counters.local_prefills, counters.remote_prefills) == (1, 1)
    assert prefill._disagg.prefill.prefilled == 1

    # the same long prompt again: its prefix is cached on the decode worker, so it stays local
    await eventually(lambda: decode._disagg.prefix.hit_tokens(request("x", 600).token_ids) > 500, timeout=10)
    assert len(await collect(decode, request("again", 600))) == 4
    assert counters.local_prefills == 2
    assert (await decode._disagg.queue.depth()) == 0
    info = await c.discovery.list_instances(c.graph.metadata.name, Role.PREFILL.value)
    assert set(info) == {"prefill-1"}


async def test_without_prefill_workers_everything_is_local(cluster):
    c = await cluster()
    decode = await c.add(Role.DECODE, "decode-1")
    assert len(await collect(decode, request("long", 600))) == 4
    assert decode._disagg.decode.counters.local_prefills == 1


async def test_a_full_queue_keeps_prefill_local(cluster):
    c = await cluster(conditional={"maxLocalPrefillLength": 100, "maxPrefillQueueSize": 1})
    await c.add(Role.PREFILL, "prefill-1")
    decode = await c.add(Role.DECODE, "decode-1")
    await eventually(lambda: decode._disagg._prefill_watch.instances, timeout=10)
    prefill = c.instances[0]
    prefill._disagg._stopping.set()  # the prefill worker stops pulling: the queue fills
    await prefill._disagg._task
    d = decode._disagg.decode
    waiting = asyncio.create_task(collect(decode, request("queued", 600)))
    await eventually(lambda: d._pending, timeout=10)
    d.queue._depth = None
    assert await d.queue.depth() == 1
    assert len(await collect(decode, request("local", 600, start=50))) == 4
    assert d.counters.local_prefills == 1
    waiting.cancel()


async def test_a_dead_prefill_worker_is_replaced_by_redelivery(cluster):
    c = await cluster()
    doomed = await c.add(Role.PREFILL, "prefill-doomed")
    decode = await c.add(Role.DECODE, "decode-1")
    await eventually(lambda: decode._disagg._prefill_watch.instances, timeout=10)
    # the doomed worker pulls the request and "dies": it never prefills nor acks
    doomed._disagg._stopping.set()
    await doomed._disagg._task
    grabbed = []

    async def die_holding_it():
        delivery = await doomed._disagg.queue.pull(timeout=5)
        grabbed.append(delivery)

    grabber = asyncio.create_task(die_holding_it())
    result = asyncio.create_task(collect(decode, request("r", 600)))
    await grabber
    assert grabbed[0] is not None and grabbed[0].num_delivered == 1
    await c.add(Role.PREFILL, "prefill-2")  # after ack-wait (1 s) the queue gives it to this one
    assert len(await result) == 4
    counters = decode._disagg.decode.counters
    assert (counters.remote_prefills, counters.local_prefills) == (1, 0)
    rescuer = c.instances[-1]._disagg.prefill
    assert rescuer.prefilled == 1


async def test_a_broken_transfer_fails_loudly_and_is_counted(cluster):
    c = await cluster()
    await c.add(Role.PREFILL, "prefill-1")
    decode = await c.add(Role.DECODE, "decode-1")
    await eventually(lambda: decode._disagg._prefill_watch.instances, timeout=10)
    decode.engine.kv_transfer.bytes_per_token = 2000  # misconfigured: decode expects another KV shape
    with pytest.raises(KvTransferError, match="KV transfer failed"):
        await collect(decode, request("r", 600))
    assert decode._disagg.decode.counters.kv_transfer_failures == 1
    await queue_empties(c, decode)  # FAILED settles the request: acked, not redelivered


async def queue_empties(c: Cluster, decode: WorkerInstance, timeout: float = 10.0) -> None:
    js, stream = c.nc.jetstream(), decode._disagg.queue.stream

    async def messages() -> int:
        return (await js.stream_info(stream)).state.messages

    await eventually(messages, until=lambda n: n == 0, timeout=timeout, what="the prefill queue to empty")


async def test_no_result_in_time_falls_back_to_local_prefill(cluster):
    c = await cluster(queue={"ackWaitSeconds": 1, "remoteTimeoutSeconds": 0.5})
    prefill = await c.add(Role.PREFILL, "prefill-1")
    decode = await c.add(Role.DECODE, "decode-1")
    await eventually(lambda: decode._disagg._prefill_watch.instances, timeout=10)
    prefill._disagg._stopping.set()  # registered but not pulling
    await prefill._disagg._task
    assert len(await collect(decode, request("r", 600))) == 4
    counters = decode._disagg.decode.counters
    assert (counters.local_prefills, counters.remote_fallbacks) == (1, 1)


async def test_graceful_prefill_stop_finishes_what_it_pulled_then_leaves(cluster):
    c = await cluster(speedup=0.2)
    prefill = await c.add(Role.PREFILL, "prefill-1")
    decode = await c.add(Role.DECODE, "decode-1")
    await eventually(lambda: decode._disagg._prefill_watch.instances, timeout=10)
    worker = prefill._disagg.prefill
    result = asyncio.create_task(collect(decode, request("r", 3000)))  # ~0.3 s of prefill at speedup 0.2
    await eventually(lambda: worker.in_flight == 1, timeout=10)
    stopping = asyncio.create_task(c.stop(prefill))  # mark draining, stop pulling, finish, leave
    # while it drains it is still registered, but no longer counted as a prefill worker to queue for
    await eventually(
        lambda: decode._disagg._prefill_watch.instances and not decode._disagg.decode._prefill_instances(),
        timeout=10,
    )
    await stopping
    assert len(await result) == 4
    assert decode._disagg.decode.counters.remote_prefills == 1 and worker.prefilled == 1
    assert not await c.discovery.list_instances(c.graph.metadata.name, Role.PREFILL.value)
    await eventually(lambda: not decode._disagg._prefill_watch.instances, timeout=10)
    assert len(await collect(decode, request("after", 600))) == 4  # no prefill worker: local
    assert decode._disagg.decode.counters.local_prefills == 1


def test_kv_from_a_side_channel_other_than_the_registered_one_is_refused():
    from inference_graph.roles.worker.remote_prefill import DisaggregatedDecode

    info = wire.InstanceInfo(
        "p1", "ns", "prefill", kv_side_channel_host="10.0.0.5", kv_side_channel_port=5600
    )
    decode = DisaggregatedDecode.__new__(DisaggregatedDecode)
    decode._prefill_instances = lambda: {"p1": info}
    good = wire.PrefillResult("r", "p1", {"remote_host": "10.0.0.5", "remote_port": 5600})
    decode._check_source(good)
    bad = wire.PrefillResult("r", "p1", {"remote_host": "127.0.0.1", "remote_port": 5600})
    with pytest.raises(KvTransferError, match=r"registered its KV side channel at 10\.0\.0\.5:5600"):
        decode._check_source(bad)
