"""Fixtures shared by every test directory: a real nats-server and etcd from ``runtime.embedded``.

The two server fixtures are session-scoped and synchronous (started once, from the
main thread). Tests isolate themselves with a fresh ``namespace`` (end-to-end
tests: a graph name) rather than fresh servers. Tests that restart a server start
their own instance instead of touching these.
"""

from __future__ import annotations

import secrets

import nats
import pytest

from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.embedded import EmbeddedEtcd, EmbeddedNats


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
