"""POST /v1/completions: prompts (text, tokens, batches), logprobs, streaming."""

from __future__ import annotations

import pytest

from inference_graph import wire

from .fakes import MODEL, parse_sse, text_frames

COMPLETIONS = "/v1/completions"


async def test_non_streaming_shape(client, fake):
    r = await client.post(COMPLETIONS, json={"model": MODEL, "prompt": "Say", "max_tokens": 3, "echo": True})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "Hello world", "logprobs": None, "finish_reason": "stop", "stop_reason": None}
    ]
    assert body["usage"]["total_tokens"] == 7
    req = fake.requests[0]
    assert (req.kind, req.prompt, req.messages, req.echo, req.sampling.max_tokens) == (
        "completion",
        "Say",
        None,
        True,
        3,
    )


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("text", ["text"]), ([1, 2, 3], [[1, 2, 3]]), (["a", "b"], ["a", "b"]), ([[1], [2, 3]], [[1], [2, 3]])],
)
async def test_prompt_forms(client, fake, prompt, expected):
    r = await client.post(COMPLETIONS, json={"model": MODEL, "prompt": prompt})
    assert r.status_code == 200, r.text
    assert [req.prompt for req in fake.requests] == expected
    if len(expected) > 1:
        rid = r.json()["id"]
        assert [req.request_id for req in fake.requests] == [f"{rid}-{k}" for k in range(len(expected))]


async def test_batch_indices_and_usage(client, fake):
    fake.script = lambda req: text_frames([req.prompt.upper()] * 2, prompt_tokens=len(req.prompt))
    r = await client.post(COMPLETIONS, json={"model": MODEL, "prompt": ["ab", "cde"]})
    body = r.json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "ABAB"), (1, "CDECDE")]
    assert body["usage"]["prompt_tokens"] == 5  # each prompt counted once
    assert body["usage"]["completion_tokens"] == 4


async def test_batch_n_choices(client, fake):
    fake.script = lambda req: [
        f for i in range(req.n) for f in text_frames([f"{req.prompt}{i}"], index=i, prompt_tokens=1)
    ]
    body = (await client.post(COMPLETIONS, json={"model": MODEL, "prompt": ["x", "y"], "n": 2})).json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "x0"), (1, "x1"), (2, "y0"), (3, "y1")]
    assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["completion_tokens"] == 4


async def test_logprobs_format(client, fake):
    fake.script = lambda req: text_frames(["Hi", " there"], logprobs=True)
    body = (await client.post(COMPLETIONS, json={"model": MODEL, "prompt": "x", "logprobs": 2})).json()
    assert fake.requests[0].sampling.logprobs == 2
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"Hi": -0.5}, {" there": -1.0}],
        "text_offset": [0, 2],
    }


async def test_logprobs_offsets_with_echo(client, fake):
    lp = wire.TextLogprob("!", -0.1)
    fake.script = lambda req: [wire.ProcessOutput(0, "Prompt!", 1, logprobs=[lp]), *text_frames([])]
    body = (
        await client.post(COMPLETIONS, json={"model": MODEL, "prompt": "Prompt", "logprobs": 0, "echo": True})
    ).json()
    assert body["choices"][0]["logprobs"]["text_offset"] == [6]


async def test_stream_events(client, fake):
    fake.script = lambda req: text_frames(["A", "B"], logprobs=True)
    body = {
        "model": MODEL,
        "prompt": "x",
        "stream": True,
        "logprobs": 0,
        "stream_options": {"include_usage": True},
    }
    events = parse_sse((await client.post(COMPLETIONS, json=body)).text)
    assert events[-1] == "[DONE]"
    *chunks, last = events[:-1]
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks] == ["A", "B", ""]
    assert [c["choices"][0]["logprobs"]["text_offset"] for c in chunks] == [[0], [1], []]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "stop_reason" not in chunks[0]["choices"][0]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 2


async def test_stream_batch(client, fake):
    body = {"model": MODEL, "prompt": ["a", "b", "c"], "stream": True}
    events = parse_sse((await client.post(COMPLETIONS, json=body)).text)
    text: dict[int, str] = {}
    for c in events[:-1]:
        (choice,) = c["choices"]
        text[choice["index"]] = text.get(choice["index"], "") + choice["text"]
    assert text == {0: "Hello world", 1: "Hello world", 2: "Hello world"}
    assert sorted(fake.closed) == sorted(r.request_id for r in fake.requests)


async def test_batch_error_fails_the_request(client, fake):
    from .fakes import processing_error

    fake.script = lambda req: [1.0] if req.prompt == "slow" else [processing_error(400, "too long", "prompt")]
    r = await client.post(COMPLETIONS, json={"model": MODEL, "prompt": ["slow", "bad"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert len(fake.closed) == 2  # the other prompt's stream was cancelled


async def test_sdk_completions(oai):
    r = await oai.completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert r.choices[0].text == "Hello world" and r.usage.completion_tokens == 2
    text = ""
    async for chunk in await oai.completions.create(model=MODEL, prompt="hi", stream=True):
        text += chunk.choices[0].text
    assert text == "Hello world"
