"""The official OpenAI SDK against the local graph: real NATS, etcd, vLLM (tiny model)."""

from __future__ import annotations

import httpx
import openai
import pytest
from transformers import AutoTokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(300)]

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(tiny_graph):
    return openai.OpenAI(base_url=tiny_graph.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_usage_matches_the_tokenizer(client, tokenizer):
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, logprobs=True, **GREEDY)
    choice = response.choices[0]
    prompt_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == 12
    assert response.usage.total_tokens == len(prompt_ids) + 12
    assert len(choice.logprobs.content) == 12  # one entry per generated token
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"


def test_streamed_chat_equals_non_streamed(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_completions_streaming_and_not(client):
    whole = client.completions.create(model="tiny", prompt="The capital of France is", **GREEDY)
    streamed = client.completions.create(
        model="tiny", prompt="The capital of France is", stream=True, **GREEDY
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert whole.usage.completion_tokens == 12
    echoed = client.completions.create(model="tiny", prompt="The capital of France is", echo=True, **GREEDY)
    assert echoed.choices[0].text == "The capital of France is" + whole.choices[0].text


def test_n_choices_are_independent_samples(client):
    response = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        n=3,
        temperature=1.0,
        seed=1,
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in response.choices) == [0, 1, 2]
    assert response.usage.completion_tokens == 24
    assert len({c.message.content for c in response.choices}) > 1


def test_repeated_prompt_is_served_from_the_prefix_cache(client):
    long_prompt = "hello world " * 100  # many full 32-token blocks
    first = client.completions.create(model="tiny", prompt=long_prompt, **GREEDY)
    second = client.completions.create(model="tiny", prompt=long_prompt, **GREEDY)
    assert second.usage.prompt_tokens_details.cached_tokens >= 32
    assert second.choices[0].text == first.choices[0].text


def test_stop_string_cuts_the_text(client):
    whole = client.completions.create(model="tiny", prompt="one two three", **GREEDY).choices[0].text
    # The first 3 characters after the first one that are not all whitespace: greedy decoding makes
    # this deterministic, and 12 tokens of nothing but whitespace would itself be a failure.
    starts = [i for i in range(1, len(whole) - 2) if whole[i : i + 3].strip()]
    assert starts, f"no stop string to cut at in {whole!r}"
    stop = whole[starts[0] : starts[0] + 3]
    cut = client.completions.create(model="tiny", prompt="one two three", stop=[stop], **GREEDY).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == whole[: whole.index(stop)]


# ------------------------------------------------------------- errors, raw HTTP


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"model": "tiny"}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
            400,
            "temperature",
        ),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(tiny_graph, body, status, param):
    response = httpx.post(
        tiny_graph.base_url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]


def test_prompt_plus_max_tokens_beyond_context_is_400(tiny_graph):
    body = {"model": "tiny", "prompt": "hello " * 3000, "max_tokens": 2000}
    response = httpx.post(tiny_graph.base_url + "/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_health_and_live(tiny_graph):
    assert httpx.get(tiny_graph.base_url + "/health").status_code == 200
    assert httpx.get(tiny_graph.base_url + "/live").status_code == 200
    metrics = httpx.get(tiny_graph.base_url + "/metrics").text
    assert "ig_frontend_requests_total" in metrics
