"""Fixtures: the fakes of ``fakes.py`` and clients bound to an app built on them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from inference_graph.roles.frontend import ModelCard, create_app

from .fakes import MAX_MODEL_LEN, MODEL, FakeDirectory, FakeProcessor


@pytest.fixture
def fake() -> FakeProcessor:
    return FakeProcessor()


@pytest.fixture
def directory() -> FakeDirectory:
    card = ModelCard(name=MODEL, max_model_len=MAX_MODEL_LEN, created=1700000000, ready=True)
    return FakeDirectory({MODEL: card})


@pytest.fixture
def app(fake: FakeProcessor, directory: FakeDirectory):
    return create_app(fake, directory)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as c:
        yield c


@pytest.fixture
async def oai(app) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")
    async with openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0
    ) as c:
        yield c
