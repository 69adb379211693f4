"""A real nats-server for the router's tests (as in tests/runtime/conftest.py)."""

from __future__ import annotations

import secrets

import nats
import pytest

from inference_graph.runtime.embedded import EmbeddedNats


@pytest.fixture(scope="session")
def nats_server():
    with EmbeddedNats() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def nc(nats_server):
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()
