"""/v1/models, /health, /live and /metrics."""

from __future__ import annotations

import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from inference_graph.roles.frontend import ModelCard, create_app

from .fakes import MAX_MODEL_LEN, MODEL, processing_error, text_frames


async def test_models_list(client, directory):
    directory.cards["other"] = ModelCard(name="other", max_model_len=64, created=5, owned_by="me")
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert body["data"] == [
        {
            "id": MODEL,
            "object": "model",
            "created": 1700000000,
            "owned_by": "inference-graph",
            "max_model_len": MAX_MODEL_LEN,
            "ready": True,
        },
    ]  # "other" has no ready worker yet: not listed

    directory.set_ready("other", True)
    body = (await client.get("/v1/models")).json()
    assert sorted(m["id"] for m in body["data"]) == sorted(["other", MODEL])


async def test_a_model_is_listed_only_while_a_worker_can_serve_it(client, directory):
    """A client that polls /v1/models and asks once its model is there gets 200, never 503."""
    directory.set_ready(MODEL, False)
    assert (await client.get("/v1/models")).json()["data"] == []
    assert (await client.get(f"/v1/models/{MODEL}")).status_code == 404
    directory.set_ready(MODEL, True)
    assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == [MODEL]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_models_retrieve(client, directory):
    assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
    r = await client.get("/v1/models/org/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    directory.cards["cold"] = ModelCard(name="cold", max_model_len=64, ready=False)
    r = await client.get("/v1/models/cold")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The model `cold` has no ready worker yet."


async def test_sdk_models(oai):
    models = [m async for m in oai.models.list()]
    assert [m.id for m in models] == [MODEL]
    assert (await oai.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nope")


async def test_health_follows_readiness(client, directory):
    directory.set_ready(MODEL, False)
    r = await client.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "not_ready", "models": []}
    assert (await client.get("/live")).status_code == 200

    directory.set_ready(MODEL, True)
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "models": [MODEL]}


async def test_health_without_models(fake):
    import httpx

    from .fakes import FakeDirectory

    app = create_app(fake, FakeDirectory({}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.get("/health")).status_code == 503
        assert (await c.get("/live")).json() == {"status": "alive"}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_after_requests(client, fake):
    user = [{"role": "user", "content": "hi"}]
    await client.post("/v1/chat/completions", json={"model": MODEL, "messages": user})
    await client.post("/v1/chat/completions", json={"model": MODEL, "messages": user, "stream": True})
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    await client.post("/v1/chat/completions", json={"model": MODEL, "messages": user, "n": 0})
    await client.post("/v1/chat/completions", json={"model": "nope", "messages": user})
    fake.script = lambda req: [processing_error(400, "too long", "messages")]
    await client.post("/v1/chat/completions", json={"model": MODEL, "messages": user})

    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in (
        "ig_frontend_requests_total",
        "ig_frontend_requests_in_flight",
        "ig_frontend_time_to_first_token_seconds",
        "ig_frontend_inter_token_latency_seconds",
        "ig_frontend_request_duration_seconds",
        "ig_frontend_prompt_tokens_total",
        "ig_frontend_completion_tokens_total",
    ):
        assert name in r.text
    s = _samples(r.text)
    req = "ig_frontend_requests_total"
    chat = (("endpoint", "chat_completions"), ("model", MODEL))
    assert s[(req, (*chat, ("status", "200")))] == 2
    assert s[(req, (*chat, ("status", "400")))] == 1  # the processor's rejection
    # not decoded (n=0) or unknown model: no model label, to bound the label set
    assert s[(req, (("endpoint", "chat_completions"), ("model", ""), ("status", "400")))] == 1
    assert s[(req, (("endpoint", "chat_completions"), ("model", ""), ("status", "404")))] == 1
    assert s[(req, (("endpoint", "completions"), ("model", MODEL), ("status", "200")))] == 1
    assert s[("ig_frontend_requests_in_flight", chat)] == 0
    model = (("model", MODEL),)
    assert s[("ig_frontend_time_to_first_token_seconds_count", model)] == 3
    assert s[("ig_frontend_inter_token_latency_seconds_count", model)] == 3  # one gap per response
    assert s[("ig_frontend_prompt_tokens_total", model)] == 15
    assert s[("ig_frontend_completion_tokens_total", model)] == 6


async def test_itl_is_per_token(fake, directory):
    import httpx

    from inference_graph import wire

    registry = CollectorRegistry()
    app = create_app(fake, directory, registry=registry)
    fake.script = lambda req: [
        wire.ProcessOutput(0, "a", 1),
        wire.ProcessOutput(0, "bcd", 3),
        *text_frames([]),
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    labels = {"model": MODEL}
    assert registry.get_sample_value("ig_frontend_inter_token_latency_seconds_count", labels) == 3
    assert registry.get_sample_value("ig_frontend_time_to_first_token_seconds_count", labels) == 1


async def test_apps_do_not_share_metrics(fake, directory):
    a, b = create_app(fake, directory), create_app(fake, directory)
    assert a.state.metrics.registry is not b.state.metrics.registry


async def test_uncached_prompt_tokens_by_where_they_would_be_prefilled(fake, directory):
    import httpx

    registry = CollectorRegistry()
    app = create_app(fake, directory, registry=registry, remote_prefill_over=100)
    prompts = iter([(500, 200), (150, 100), (80, 0)])  # (prompt, cached): 300 remote, 50 and 80 local

    def script(req):
        prompt, cached = next(prompts)
        return text_frames(["a"], prompt_tokens=prompt, cached_tokens=cached)

    fake.script = script
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        for _ in range(3):
            await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    name = "ig_frontend_uncached_prompt_tokens_total"
    assert registry.get_sample_value(name, {"model": MODEL, "prefill": "remote"}) == 300
    assert registry.get_sample_value(name, {"model": MODEL, "prefill": "local"}) == 130
