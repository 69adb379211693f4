"""Fixtures shared by every test directory: a real nats-server and etcd from ``runtime.embedded``, and
the real Kubernetes control plane of tests/cluster (``cluster``).

The two server fixtures are session-scoped and synchronous (started once, from the
main thread). Tests isolate themselves with a fresh ``namespace`` (end-to-end
tests: a graph name) rather than fresh servers. Tests that restart a server start
their own instance instead of touching these.
"""

from __future__ import annotations

import os
import secrets

import nats
import pytest

from cluster import cluster as ctl
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.embedded import EmbeddedEtcd, EmbeddedNats


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The real control plane of tests/cluster (kube-apiserver, controller-manager, scheduler, kwok with 4
    fake GPU nodes, LWS), started once per session apart from a developer's `make cluster`.

    Builds the pinned binaries when the cache lacks them (tens of minutes, once per version set); with
    IG_CLUSTER_BUILD=0 and no binaries the tests that use it skip, saying why.
    """
    cache = ctl.cache_dir()
    if ctl.missing(cache) and os.environ.get("IG_CLUSTER_BUILD") == "0":
        pytest.skip(
            f"the cluster's binaries are not built ({cache}) and IG_CLUSTER_BUILD=0 says not to build them"
        )
    cache = ctl.build()
    c = ctl.Cluster(cache, tmp_path_factory.mktemp("cluster"))
    try:
        c.up(nodes=4)
    except BaseException:
        ctl.stop(c.state, quiet=True)
        raise
    yield c
    groups = dict(c.state["processes"])
    ctl.stop(c.state)
    left = {name: ctl.group_members(pgid) for name, pgid in groups.items() if ctl.group_members(pgid)}
    assert not left, f"processes left after stop: {left}"
    assert not os.path.exists(c.state["tmp"])


@pytest.fixture(scope="session")
def nats_server():
    """A nats-server with JetStream; ``.url`` is its client URL."""
    with EmbeddedNats() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_server():
    """A single-member etcd; ``.endpoints`` is its client URL list."""
    with EmbeddedEtcd() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    """A namespace (graph name) no other test uses, so tests share servers safely."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def nc(nats_server):
    """A NATS connection on the test's event loop."""
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture
async def discovery(etcd_server):
    """A Discovery connection on the test's event loop."""
    disc = await Discovery.connect(etcd_server.endpoints)
    yield disc
    await disc.close()
