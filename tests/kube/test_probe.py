"""The exec probe of processor and worker pods, against a real etcd and the real Discovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from inference_graph import wire
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.embedded import EmbeddedEtcd
from inference_graph_operator import probe


@pytest.fixture(scope="module")
def etcd():
    with EmbeddedEtcd() as server:
        yield server


def info(instance_id: str, component: str = "decode", namespace: str = "g") -> wire.InstanceInfo:
    return wire.InstanceInfo(
        instance_id=instance_id,
        namespace=namespace,
        component=component,
        model="m",
        host="h",
        pid=1,
        started_at=0.0,
    )


def pod_env(etcd, pod="g-decode-5d8f7c9b4-x2x7q", namespace="g") -> dict[str, str]:
    return {"POD_NAME": pod, "IG_NAMESPACE": namespace, "ETCD_ENDPOINTS": ",".join(etcd.endpoints)}


async def test_ready_while_registered_and_not_after(etcd):
    discovery = await Discovery.connect(etcd.endpoints)
    try:
        env = pod_env(etcd)
        assert probe.check(env, "decode")[0] is False  # engine still loading: not registered yet
        registration = await discovery.register(info("g-decode-5d8f7c9b4-x2x7q-1a2b3c4d"), 5)
        ok, message = probe.check(env, "decode")
        assert ok, message
        assert probe.check(env, "prefill")[0] is False  # another role's key does not count
        assert probe.check({**env, "POD_NAME": "g-decode-5d8f7c9b4-zzzzz"}, "decode")[0] is False
        assert probe.check({**env, "IG_NAMESPACE": "other"}, "decode")[0] is False
        await registration.revoke()  # what a stopped or hung process's lapsed lease does
        ok, message = probe.check(env, "decode")
        assert not ok and "not registered" in message
    finally:
        await discovery.close()


# Runs the probe as ``python -m`` would, then reports the third-party packages it imported.
_RUN_PROBE = """
import runpy, sys
sys.argv = ["probe", *sys.argv[1:]]
try:
    runpy.run_module("inference_graph_operator.probe", run_name="__main__", alter_sys=True)
finally:
    loaded = {name.split(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
    print("imported:", sorted(m for m in loaded if not m.startswith(("_", "inference_graph"))), file=sys.stderr)
"""


async def test_command_line_exit_status(etcd):
    discovery = await Discovery.connect(etcd.endpoints)
    registration = await discovery.register(info("g-processor-7c-abcde-00000000", "processor"), 5)
    try:
        env = {**os.environ, **pod_env(etcd, pod="g-processor-7c-abcde")}
        command = [sys.executable, "-c", _RUN_PROBE, "--role", "processor"]
        result = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        # Cheap enough to run every 10 s: the standard library only (no pydantic, msgspec, aetcd, ...).
        assert "imported: []" in result.stderr, result.stderr
        result = await asyncio.to_thread(
            subprocess.run, [*command[:-1], "decode"], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1 and "not registered" in result.stderr
    finally:
        await registration.revoke()
        await discovery.close()


def test_unreachable_etcd_and_missing_identity_fail():
    ok, message = probe.check(
        {"POD_NAME": "p", "IG_NAMESPACE": "g", "ETCD_ENDPOINTS": "http://127.0.0.1:1"}, "decode"
    )
    assert not ok and "etcd unreachable" in message
    ok, message = probe.check({"IG_NAMESPACE": "g"}, "decode")
    assert not ok and "POD_NAME" in message


def test_key_range_covers_exactly_this_pods_instances():
    start, end = probe.key_range("g", "decode", "g-decode-abc")
    assert start == b"/ig/g/instances/decode/g-decode-abc-"
    assert start <= b"/ig/g/instances/decode/g-decode-abc-0123abcd" < end
    assert not start <= b"/ig/g/instances/decode/g-decode-abcd-0123abcd" < end
