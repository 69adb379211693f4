import pytest

from inference_graph import wire
from inference_graph.errors import ServingError
from inference_graph.processing import PromptTokenizer
from inference_graph.processing import tokenization as tokenization_module

MESSAGES = [
    wire.ChatMessage(role="system", content="Be brief."),
    wire.ChatMessage(role="user", content="Hi é 東京"),
]


def chat_request(messages=MESSAGES, **fields) -> wire.ProcessRequest:
    return wire.ProcessRequest(
        request_id="r", model="m", kind="chat", sampling=wire.SamplingOptions(), messages=messages, **fields
    )


def completion_request(prompt) -> wire.ProcessRequest:
    return wire.ProcessRequest(
        request_id="r", model="m", kind="completion", sampling=wire.SamplingOptions(), prompt=prompt
    )


@pytest.mark.parametrize("name", ["tiny", "smol"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
async def test_chat_ids_equal_the_chat_template(request, name, add_generation_prompt):
    tokenizer: PromptTokenizer = request.getfixturevalue(name)
    expected = tokenizer.hf.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in MESSAGES],
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=False,
    )
    ids = await tokenizer.tokenize(chat_request(add_generation_prompt=add_generation_prompt))
    assert ids == expected
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith(
        "<|im_start|>assistant\n" if add_generation_prompt else "<|im_end|>\n"
    )


async def test_reserved_template_kwargs_are_ignored(tiny):
    ids = await tiny.tokenize(chat_request(chat_template_kwargs={"tokenize": False, "enable_thinking": True}))
    assert ids == await tiny.tokenize(chat_request())


async def test_completion_text_and_token_ids(tiny):
    assert await tiny.tokenize(completion_request("hello world")) == tiny.hf.encode("hello world")
    assert await tiny.tokenize(completion_request([5, 6, 7])) == [5, 6, 7]


TEXTS = [
    "hello world",
    "  leading spaces,\n\ttabs and 12345 digits ",
    "héllo wörld 東京 🤖 " * 20,
    "<|im_start|>user\nspecial tokens inside text<|im_end|>",
    "the capital of France is Paris " * 200,
]


@pytest.mark.parametrize("name", ["tiny", "smol"])
@pytest.mark.parametrize("text", TEXTS)
def test_completion_ids_equal_the_tokenizers_encode(request, name, text):
    tokenizer: PromptTokenizer = request.getfixturevalue(name)
    assert tokenizer.encode_text(text) == tokenizer.hf.encode(text)


async def test_long_prompts_are_tokenized_off_the_loop(tiny, monkeypatch):
    text = "the capital of France is Paris " * 100
    inline = await tiny.tokenize(completion_request(text))
    monkeypatch.setattr(tokenization_module, "INLINE_MAX_CHARS", 10)
    assert await tiny.tokenize(completion_request(text)) == inline


@pytest.mark.parametrize(
    ("request_", "param", "needle"),
    [
        (completion_request([1, 10**6]), "prompt", "out of vocabulary"),
        (completion_request([-1]), "prompt", "out of vocabulary"),
        (completion_request(""), "prompt", "empty"),
        (completion_request([]), "prompt", "empty"),
    ],
)
async def test_bad_prompts(tiny, request_, param, needle):
    with pytest.raises(ServingError) as caught:
        await tiny.tokenize(request_)
    assert (caught.value.info.status, caught.value.info.param) == (400, param)
    assert needle in caught.value.info.message


async def test_template_errors_are_client_errors(tiny):
    with pytest.raises(ServingError) as caught:
        await tiny.tokenize(chat_request(chat_template_kwargs={}, messages=[]))
    assert caught.value.info.status == 400
    broken = PromptTokenizer(tiny.hf.__class__.from_pretrained(tiny.hf.name_or_path))
    broken.hf.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ServingError) as caught:
        await broken.tokenize(chat_request())
    assert caught.value.info.param == "messages" and "roles must alternate" in caught.value.info.message
    broken.close()


def test_logprob_tokens_show_partial_characters_as_bytes(smol):
    ids = smol.hf.encode(" 東")
    pieces = [smol.logprob_token(i) for i in ids]
    assert b"".join(bytes(raw) for _, raw in pieces) == " 東".encode()
    assert any(text.startswith("bytes:\\x") for text, _ in pieces)
    assert smol.logprob_token(smol.hf.encode(" hello")[0]) == (" hello", list(b" hello"))
    assert smol.logprob_token(smol.hf.eos_token_id) == ("<|im_end|>", list(b"<|im_end|>"))
