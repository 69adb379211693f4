"""POST /v1/chat/completions: request normalisation and response shapes."""

from __future__ import annotations

import pytest

from inference_graph import wire

from .fakes import MAX_MODEL_LEN, MODEL, parse_sse, processing_error, text_frames

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


async def test_non_streaming_shape(client, fake):
    r = await client.post(CHAT, json={"model": MODEL, "messages": USER})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) == len("chatcmpl-") + 32
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"content": "Hello world", "role": "assistant"},
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert fake.requests[0].request_id == body["id"]


async def test_request_is_normalised(client, fake):
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                "name": "u",
            },
            {"role": "assistant", "content": None},
        ],
        "temperature": 0,
        "top_p": 0.5,
        "top_k": 4,
        "seed": 7,
        "stop": "END",
        "stop_token_ids": [3],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.2,
        "min_tokens": 2,
        "max_tokens": 10,
        "ignore_eos": True,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
        "add_generation_prompt": False,
        "chat_template_kwargs": {"enable_thinking": False},
        "user": "someone",
    }
    assert (await client.post(CHAT, json=body)).status_code == 200
    req = fake.requests[0]
    assert req.kind == "chat" and req.model == MODEL and req.prompt is None
    assert req.messages == [
        wire.ChatMessage("system", "be brief"),
        wire.ChatMessage("user", "a\nb", "u"),
        wire.ChatMessage("assistant", None),
    ]
    assert req.sampling == wire.SamplingOptions(
        max_tokens=10, min_tokens=2, temperature=0.0, top_p=0.5, top_k=4, seed=7,
        presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2,
        stop_token_ids=[3], ignore_eos=True, logprobs=None,
    )  # fmt: skip
    assert req.stop == ["END"]
    assert (req.include_stop_str_in_output, req.skip_special_tokens, req.add_generation_prompt) == (
        True,
        False,
        False,
    )
    assert req.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, MAX_MODEL_LEN),  # absent: max_model_len, clamped by the processor
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9}, 9),
        ({"max_tokens": 7, "max_completion_tokens": 9}, 9),
        ({"max_tokens": MAX_MODEL_LEN}, MAX_MODEL_LEN),
    ],
)
async def test_max_tokens_contract(client, fake, fields, expected):
    r = await client.post(CHAT, json={"model": MODEL, "messages": USER, **fields})
    assert r.status_code == 200
    assert fake.requests[0].sampling.max_tokens == expected


async def test_stop_list_drops_empty_strings(client, fake):
    await client.post(CHAT, json={"model": MODEL, "messages": USER, "stop": ["a", "", "b"]})
    assert fake.requests[0].stop == ["a", "b"]


async def test_n_choices_aggregated_per_index(client, fake):
    def script(req):
        a = text_frames(["A1", "A2", "A3"], index=0, prompt_tokens=4, cached_tokens=2)
        b = text_frames(["B1"], index=1, prompt_tokens=4, cached_tokens=2, finish="length")
        return [a[0], b[0], a[1], b[1], a[2], a[3]]

    fake.script = script
    body = (await client.post(CHAT, json={"model": MODEL, "messages": USER, "n": 2})).json()
    assert fake.requests[0].n == 2
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "A1A2A3", "stop"),
        (1, "B1", "length"),
    ]
    # prompt tokens once, completion tokens summed over choices
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 4,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


async def test_logprobs_format(client, fake):
    fake.script = lambda req: text_frames(["Hi", "!"], logprobs=True)
    body = {"model": MODEL, "messages": USER, "logprobs": True, "top_logprobs": 1}
    r = (await client.post(CHAT, json=body)).json()
    assert fake.requests[0].sampling.logprobs == 1
    assert r["choices"][0]["logprobs"] == {
        "content": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": None}]},
            {"token": "!", "logprob": -1.0, "bytes": [33], "top_logprobs": [{"token": "!", "logprob": -1.0, "bytes": None}]},
        ]
    }  # fmt: skip


async def test_logprobs_true_without_top(client, fake):
    await client.post(CHAT, json={"model": MODEL, "messages": USER, "logprobs": True})
    assert fake.requests[0].sampling.logprobs == 0


async def test_stream_events(client, fake):
    r = await client.post(CHAT, json={"model": MODEL, "messages": USER, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {fake.requests[0].request_id}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert all("usage" not in c for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert choices == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {"content": " world"}, "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop", "stop_reason": None},
    ]


async def test_stream_include_usage(client, fake):
    fake.script = lambda req: text_frames(["a", "b", "c"], prompt_tokens=9, cached_tokens=8)
    body = {"model": MODEL, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    events = parse_sse((await client.post(CHAT, json=body)).text)
    assert events[-1] == "[DONE]"
    *chunks, last = events[:-1]
    assert all(c["usage"] is None for c in chunks)
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 8},
    }


async def test_stream_n_interleaved(client, fake):
    body = {"model": MODEL, "messages": USER, "stream": True, "n": 3}
    events = parse_sse((await client.post(CHAT, json=body)).text)
    text: dict[int, str] = {}
    roles, finishes = set(), set()
    for c in events[:-1]:
        (choice,) = c["choices"]
        delta = choice["delta"]
        if delta.get("role"):
            roles.add(choice["index"])
        text[choice["index"]] = text.get(choice["index"], "") + delta.get("content", "")
        if choice["finish_reason"]:
            finishes.add(choice["index"])
    assert text == {0: "Hello world", 1: "Hello world", 2: "Hello world"}
    assert roles == finishes == {0, 1, 2}


async def test_stream_error_after_start(client, fake):
    fake.script = lambda req: [
        wire.ProcessOutput(0, "Hel", 1),
        processing_error(503, "worker lost", None, "worker_lost"),
    ]
    r = await client.post(CHAT, json={"model": MODEL, "messages": USER, "stream": True})
    assert r.status_code == 200  # already committed
    events = parse_sse(r.text)
    assert events[-1] == {
        "error": {
            "message": "worker lost",
            "type": "service_unavailable_error",
            "param": None,
            "code": "worker_lost",
        }
    }
    assert "[DONE]" not in events
    assert events[1]["choices"][0]["delta"] == {"content": "Hel"}


async def test_frames_without_text_are_not_sent(client, fake):
    # a token that does not complete a character yet: no empty content delta
    fake.script = lambda req: [wire.ProcessOutput(0, "", 1), wire.ProcessOutput(0, "é", 1), *text_frames([])]
    events = parse_sse(
        (await client.post(CHAT, json={"model": MODEL, "messages": USER, "stream": True})).text
    )
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "é"}, {}]


# ---------------------------------------------------------------- the official SDK


async def test_sdk_chat(oai):
    r = await oai.chat.completions.create(model=MODEL, messages=USER, max_tokens=5)
    assert r.choices[0].message.content == "Hello world"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == 7
    assert r.usage.prompt_tokens_details.cached_tokens == 0


async def test_sdk_chat_stream(oai):
    stream = await oai.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert (text, finish, usage.completion_tokens) == ("Hello world", "stop", 2)


async def test_sdk_errors(oai, fake):
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        await oai.chat.completions.create(model="nope", messages=USER)
    assert info.value.body["code"] == "model_not_found"

    fake.script = lambda req: [processing_error(400, "too long", "messages", "context_length_exceeded")]
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    assert bad.value.body["param"] == "messages"

    fake.script = lambda req: [wire.ProcessOutput(0, "x", 1), processing_error(500, "gone")]
    stream = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="gone"):
        async for _ in stream:
            pass


async def test_model_sampling_defaults_apply_to_omitted_fields(client, fake, directory):
    from inference_graph.roles.frontend import ModelCard

    defaults = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    directory.cards[MODEL] = ModelCard(
        name=MODEL, max_model_len=MAX_MODEL_LEN, ready=True, sampling_defaults=defaults
    )
    await client.post(CHAT, json={"model": MODEL, "messages": USER})
    await client.post(CHAT, json={"model": MODEL, "messages": USER, "temperature": 1.0, "top_k": -1})
    first, second = (r.sampling for r in fake.requests)
    assert (first.temperature, first.top_p, first.top_k, first.repetition_penalty) == (0.7, 0.8, 20, 1.05)
    assert (second.temperature, second.top_p, second.top_k) == (1.0, 0.8, -1)


@pytest.mark.parametrize("stream", [False, True])
async def test_request_id_header(client, fake, stream):
    r = await client.post(CHAT, json={"model": MODEL, "messages": USER, "stream": stream})
    assert r.headers["x-request-id"] == fake.requests[0].request_id
