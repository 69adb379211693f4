"""Discovery against a real etcd: registration, leases, watches, model registry."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from inference_graph import wire
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.embedded import EmbeddedEtcd
from support import eventually

TTL = 2


def info(ns: str, iid: str, component: str = "decode", model: str = "m") -> wire.InstanceInfo:
    return wire.InstanceInfo(instance_id=iid, namespace=ns, component=component, model=model, pid=os.getpid())


class Recorder:
    """A listener that records (event, instance_id)."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: str, value) -> None:
        self.events.append((event, value.instance_id))


async def test_register_appears_and_revoke_removes_at_once(discovery, namespace):
    watch = await discovery.watch_instances(namespace)
    rec = Recorder()
    watch.add_listener(rec)
    reg = await discovery.register(info(namespace, "a"), ttl=TTL)
    await watch.wait_for(lambda s: "a" in s, timeout=2)
    assert watch.instances["a"].component == "decode"
    before = watch.instances

    lease_id = reg.lease_id
    await reg.revoke()
    # Immediate, not a TTL expiry: once revoke() returns the lease and its keys are gone from etcd.
    assert (await discovery._client.get_lease_info(lease_id)).TTL == -1
    assert await discovery.list_instances(namespace) == {}
    await watch.wait_for(lambda s: "a" not in s, timeout=1)
    assert "a" in before  # snapshots are replaced, never mutated
    assert rec.events == [("added", "a"), ("removed", "a")]
    await watch.close()


async def test_component_filter_and_initial_listing(discovery, namespace):
    r1 = await discovery.register(info(namespace, "d1"), ttl=TTL)
    r2 = await discovery.register(info(namespace, "p1", component="prefill"), ttl=TTL)
    watch = await discovery.watch_instances(namespace, component="prefill")
    assert set(watch.instances) == {"p1"}  # loaded before watch_instances returns
    assert set(await discovery.list_instances(namespace)) == {"d1", "p1"}
    await asyncio.gather(r1.revoke(), r2.revoke(), watch.close())


async def test_stopped_keepalive_expires_after_ttl(discovery, namespace):
    watch = await discovery.watch_instances(namespace)
    removed = asyncio.Event()
    watch.add_listener(lambda ev, i: ev == "removed" and removed.set())
    reg = await discovery.register(info(namespace, "a"), ttl=TTL)
    await watch.wait_for(lambda s: "a" in s, timeout=2)
    reg.stop_keepalive()
    lease = await discovery._client.get_lease_info(reg.lease_id)
    # Stopping the keepalive revokes nothing: the lease (granted for TTL) and the keys stay ...
    assert lease.grantedTTL == TTL and 0 < lease.TTL <= TTL
    assert set(await discovery.list_instances(namespace)) == {"a"} and not removed.is_set()
    # ... and the lease only counts down (nothing refreshes it) until etcd expires it.
    remaining = [lease.TTL]

    async def remaining_ttl() -> int:
        remaining.append((await discovery._client.get_lease_info(reg.lease_id)).TTL)
        return remaining[-1]

    await eventually(remaining_ttl, until=lambda ttl: ttl == -1, timeout=TTL + 3, interval=0.1)
    assert remaining == sorted(remaining, reverse=True), remaining
    await asyncio.wait_for(removed.wait(), timeout=2)  # and the watch reports the removal
    assert await discovery.list_instances(namespace) == {}
    await watch.close()


_CHILD = """
import asyncio, os, sys
from inference_graph import wire
from inference_graph.runtime.discovery import Discovery
async def main():
    d = await Discovery.connect([sys.argv[1]])
    await d.register(wire.InstanceInfo(instance_id="child", namespace=sys.argv[2], component="decode"), ttl=2)
    print("ready", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_sigkilled_process_disappears_after_ttl(discovery, namespace, etcd_server):
    watch = await discovery.watch_instances(namespace)
    rec = Recorder()
    watch.add_listener(rec)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, etcd_server.endpoint, namespace, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 20)).strip() == b"ready"
        await watch.wait_for(lambda s: "child" in s, timeout=2)
    finally:
        child.kill()
        await child.wait()
    await watch.wait_for(lambda s: "child" not in s, timeout=TTL + 3)
    assert rec.events == [("added", "child"), ("removed", "child")]
    await watch.close()


async def test_keepalive_regrants_a_lost_lease(discovery, namespace):
    """A lease that vanished under a live process (pause, etcd data loss) comes back."""
    watch = await discovery.watch_instances(namespace)
    reg = await discovery.register(info(namespace, "a"), ttl=TTL, model="m")
    await watch.wait_for(lambda s: "a" in s, timeout=2)
    old_lease = reg.lease_id
    await discovery.client.revoke_lease(old_lease)  # behind the registration's back
    await watch.wait_for(lambda s: "a" not in s, timeout=1)
    await watch.wait_for(lambda s: "a" in s, timeout=TTL + 2)
    key = reg.keys[0].encode()
    assert (await discovery.client.get(key)).lease not in (0, old_lease)
    assert await discovery.list_models(namespace) == {"m": ["a"]}
    await reg.revoke()
    await watch.close()


async def test_model_registry(discovery, namespace):
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    models = await discovery.watch_models(namespace)
    r1 = await discovery.register(info(namespace, "a"), ttl=TTL, model=model)
    r2 = await discovery.register(info(namespace, "b"), ttl=TTL, model=model)
    await models.wait_for(lambda s: len(s) == 2, timeout=2)
    assert models.models == {model: ["a", "b"]}
    assert await discovery.list_models(namespace) == {model: ["a", "b"]}

    await r1.revoke()
    await models.wait_for(lambda s: len(s) == 1, timeout=1)
    assert await discovery.list_models(namespace) == {model: ["b"]}

    await r2.revoke()
    await models.wait_for(lambda s: not s, timeout=1)
    assert models.models == {}
    assert await discovery.list_models(namespace) == {}
    await models.close()


async def test_wait_for_times_out(discovery, namespace):
    watch = await discovery.watch_instances(namespace)
    with pytest.raises(TimeoutError):
        await watch.wait_for(lambda s: "never" in s, timeout=0.2)
    await watch.close()


async def test_connect_fails_clearly_when_no_endpoint_answers():
    from inference_graph.runtime.embedded import free_port
    from inference_graph.runtime.errors import DiscoveryUnavailableError

    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DiscoveryUnavailableError) as info_:
        await Discovery.connect([endpoint], timeout=1)
    assert info_.value.endpoints == [endpoint]


async def test_watch_and_lease_survive_etcd_restart(namespace):
    """On a watch error the watch re-lists and reports what changed while it was blind."""
    async with EmbeddedEtcd() as etcd:
        disc = await Discovery.connect(etcd.endpoints)
        other = await Discovery.connect(etcd.endpoints)
        watch = await disc.watch_instances(namespace)
        rec = Recorder()
        watch.add_listener(rec)
        keep = await disc.register(info(namespace, "keep"), ttl=TTL)
        gone = await other.register(info(namespace, "gone"), ttl=TTL)
        await watch.wait_for(lambda s: {"keep", "gone"} <= set(s), timeout=2)

        etcd.kill_process()
        gone.stop_keepalive()  # "gone" dies while etcd is down
        await asyncio.to_thread(etcd.restart)
        await watch.wait_for(lambda s: "gone" not in s, timeout=TTL + 8)
        assert watch.resyncs >= 1  # the watch broke and was re-established
        assert "keep" in watch.instances  # kept alive across the restart

        late = await disc.register(info(namespace, "late"), ttl=TTL)  # the new watch sees new keys
        await watch.wait_for(lambda s: "late" in s, timeout=2)
        assert ("removed", "gone") in rec.events
        await asyncio.gather(keep.revoke(), late.revoke())
        await watch.close()
        await asyncio.gather(disc.close(), other.close())


async def test_close_revokes_registrations(discovery, namespace, etcd_server):
    watch = await discovery.watch_instances(namespace)
    other = await Discovery.connect(etcd_server.endpoints)
    await other.register(info(namespace, "a"), ttl=TTL)  # the Registration is not even kept
    await watch.wait_for(lambda s: "a" in s, timeout=2)
    await other.close()
    await watch.wait_for(lambda s: "a" not in s, timeout=1)
    await watch.close()


async def test_a_draining_instance_stays_registered_marked_until_it_revokes(discovery, namespace):
    watch = await discovery.watch_instances(namespace)
    models = await discovery.watch_models(namespace)
    rec = Recorder()
    watch.add_listener(rec)
    registered = info(namespace, "a")
    reg = await discovery.register(registered, ttl=TTL, model="m")
    await watch.wait_for(lambda s: "a" in s, timeout=2)

    await discovery.mark_draining(reg, registered, model="m")
    await watch.wait_for(lambda s: s["a"].draining, timeout=2)
    await models.wait_for(lambda s: all(entry.info.draining for entry in s.values()), timeout=2)
    assert rec.events == [("added", "a"), ("added", "a")]  # changed, never "removed": not lost
    await reg.revoke()
    await watch.wait_for(lambda s: "a" not in s, timeout=2)
    assert rec.events[-1] == ("removed", "a")
    await asyncio.gather(watch.close(), models.close())


async def test_planner_decisions_round_trip_and_are_watched_across_namespaces(discovery, namespace):
    assert await discovery.get_replicas(namespace) is None
    every = await discovery.watch_planner_decisions()
    await discovery.put_replicas(namespace, {"decode": 3, "prefill": 0})
    assert await discovery.get_replicas(namespace) == {"decode": 3, "prefill": 0}
    key = f"/ig/{namespace}/planner/replicas".encode()
    await discovery.client.put(key, b"not json")
    assert await discovery.get_replicas(namespace) is None  # undecodable: no decision, not a crash
    await discovery.put_replicas(namespace, {"decode": 3, "prefill": 0})
    await every.wait_for(lambda s: s.get(namespace) == (namespace, {"decode": 3, "prefill": 0}), timeout=2)
    await every.close()
