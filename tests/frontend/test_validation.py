"""Every rejected request gets OpenAI's error shape, the right status and the right param."""

from __future__ import annotations

import json

import pytest

from inference_graph.roles.frontend import ModelCard

from .fakes import MODEL, processing_error

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": USER, **fields}


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "hi", **fields}


# (id, path, body, status, param, code)
CASES = [
    ("malformed-json", CHAT, b'{"model": ', 400, None, None),
    ("malformed-json-completions", COMPLETIONS, b"not json", 400, None, None),
    ("body-not-object", CHAT, b"[]", 400, None, None),
    ("missing-model", CHAT, {"messages": USER}, 400, "model", "missing_required_parameter"),
    ("missing-messages", CHAT, {"model": MODEL}, 400, "messages", "missing_required_parameter"),
    ("empty-messages", CHAT, chat(messages=[]), 400, "messages", None),
    ("model-wrong-type", CHAT, chat(model=3), 400, "model", None),
    ("temperature-high", CHAT, chat(temperature=2.5), 400, "temperature", None),
    ("temperature-negative", CHAT, chat(temperature=-0.1), 400, "temperature", None),
    ("temperature-string", CHAT, chat(temperature="hot"), 400, "temperature", None),
    ("top-p-zero", CHAT, chat(top_p=0), 400, "top_p", None),
    ("top-p-high", CHAT, chat(top_p=1.5), 400, "top_p", None),
    ("top-k-low", CHAT, chat(top_k=-2), 400, "top_k", None),
    ("n-zero", CHAT, chat(n=0), 400, "n", None),
    ("n-too-many", CHAT, chat(n=17), 400, "n", None),
    ("n-float", CHAT, chat(n=1.5), 400, "n", None),
    ("max-tokens-zero", CHAT, chat(max_tokens=0), 400, "max_tokens", None),
    ("max-tokens-string", CHAT, chat(max_tokens="ten"), 400, "max_tokens", None),
    ("max-tokens-over-context", CHAT, chat(max_tokens=1000), 400, "max_tokens", None),
    ("max-completion-tokens-over", CHAT, chat(max_completion_tokens=129), 400, "max_completion_tokens", None),
    ("min-tokens-over-max", CHAT, chat(max_tokens=4, min_tokens=5), 400, "min_tokens", None),
    ("presence-penalty", CHAT, chat(presence_penalty=2.5), 400, "presence_penalty", None),
    ("frequency-penalty", CHAT, chat(frequency_penalty=-3), 400, "frequency_penalty", None),
    ("repetition-penalty", CHAT, chat(repetition_penalty=0), 400, "repetition_penalty", None),
    ("stop-int", CHAT, chat(stop=5), 400, "stop", None),
    ("stop-token-ids-negative", CHAT, chat(stop_token_ids=[-1]), 400, "stop_token_ids", None),
    ("logprobs-not-bool", CHAT, chat(logprobs=5), 400, "logprobs", None),
    ("top-logprobs-high", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    ("top-logprobs-alone", CHAT, chat(top_logprobs=2), 400, "top_logprobs", None),
    (
        "stream-options-no-stream",
        CHAT,
        chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
        None,
    ),
    ("role-invalid", CHAT, chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role", None),
    (
        "role-missing",
        CHAT,
        chat(messages=[{"content": "x"}]),
        400,
        "messages[0].role",
        "missing_required_parameter",
    ),
    (
        "content-null",
        CHAT,
        chat(messages=[{"role": "user", "content": None}]),
        400,
        "messages[0].content",
        None,
    ),
    (
        "image-part",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages[0].content[0].type",
        "unsupported_content_type",
    ),
    (
        "text-part-without-text",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        400,
        "messages[0].content[0].text",
        None,
    ),
    (
        "template-kwargs-nested",
        CHAT,
        chat(chat_template_kwargs={"x": {"y": 1}}),
        400,
        "chat_template_kwargs",
        None,
    ),
    ("unknown-model", CHAT, chat(model="nope"), 404, "model", "model_not_found"),
    ("model-not-ready", CHAT, chat(model="cold"), 503, "model", "model_not_ready"),
    ("missing-prompt", COMPLETIONS, {"model": MODEL}, 400, "prompt", "missing_required_parameter"),
    ("prompt-int", COMPLETIONS, completion(prompt=5), 400, "prompt", None),
    ("prompt-empty-list", COMPLETIONS, completion(prompt=[]), 400, "prompt", None),
    ("prompt-mixed", COMPLETIONS, completion(prompt=[1, "a"]), 400, "prompt", None),
    ("prompt-empty-token-list", COMPLETIONS, completion(prompt=[[]]), 400, "prompt", None),
    ("prompt-negative-token", COMPLETIONS, completion(prompt=[1, -2]), 400, "prompt", None),
    ("prompt-too-many", COMPLETIONS, completion(prompt=["a"] * 257), 400, "prompt", None),
    ("completion-logprobs-high", COMPLETIONS, completion(logprobs=21), 400, "logprobs", None),
    ("completion-logprobs-bool", COMPLETIONS, completion(logprobs=True), 400, "logprobs", None),
    ("echo-string", COMPLETIONS, completion(echo="yes"), 400, "echo", None),
    ("suffix", COMPLETIONS, completion(suffix="end"), 400, "suffix", None),
    ("completion-max-tokens-over", COMPLETIONS, completion(max_tokens=129), 400, "max_tokens", None),
    ("completion-unknown-model", COMPLETIONS, completion(model="nope"), 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_rejected(client, directory, fake, path, body, status, param, code):
    directory.cards["cold"] = ModelCard(name="cold", max_model_len=64, ready=False)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "service_unavailable_error")
    assert fake.requests == []  # rejected before reaching the processor


async def test_malformed_json_message(client):
    r = await client.post(CHAT, content=b"{")
    assert "not valid JSON" in r.json()["error"]["message"]


async def test_unknown_fields_are_ignored(client, fake):
    r = await client.post(CHAT, json=chat(tools=[], response_format={"type": "text"}, foo=1))
    assert r.status_code == 200, r.text
    assert len(fake.requests) == 1


async def test_explicit_nulls_mean_defaults(client, fake):
    body = chat(temperature=None, top_p=None, n=None, max_tokens=None, stop=None, stream=None, logprobs=None)
    r = await client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    sampling = fake.requests[0].sampling
    assert (sampling.temperature, sampling.top_p, fake.requests[0].n) == (1.0, 1.0, 1)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "param", "code", "kind"),
    [
        (400, "messages", "context_length_exceeded", "invalid_request_error"),
        (400, "max_tokens", "context_length_exceeded", "invalid_request_error"),
        (503, None, "worker_lost", "service_unavailable_error"),
        (500, None, None, "server_error"),
    ],
)
async def test_processor_error_before_output(client, fake, stream, status, param, code, kind):
    fake.script = lambda req: [processing_error(status, "nope", param, code)]
    r = await client.post(CHAT, json=chat(stream=stream))
    assert r.status_code == status
    assert r.json() == {"error": {"message": "nope", "type": kind, "param": param, "code": code}}
    assert fake.closed == [fake.requests[0].request_id]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_unexpected_processor_exception_is_500(client, fake, path):
    fake.script = lambda req: [RuntimeError("boom")]
    body = chat() if path == CHAT else completion()
    r = await client.post(path, json=body)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error"
    assert "boom" not in error["message"]  # internals are logged, not leaked


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nope", 404), ("POST", "/nope", 404), ("GET", CHAT, 405), ("DELETE", "/v1/models", 405)],
)
async def test_routing_errors_use_openai_shape(client, method, path, status):
    r = await client.request(method, path)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None and error["code"] is None
    assert path in error["message"]
