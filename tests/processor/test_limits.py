import pytest

from inference_graph.errors import ServingError
from inference_graph.processing.limits import fit_max_tokens


@pytest.mark.parametrize(
    ("kind", "prompt", "max_tokens", "expected"),
    [
        ("chat", 10, 100, 100),
        ("chat", 10, 118, 118),  # exactly fits
        ("chat", 10, 128, 118),  # max_tokens == max_model_len: "absent", clamped
        ("completion", 100, 500, 28),  # larger than max_model_len: clamped too
    ],
)
def test_fits(kind, prompt, max_tokens, expected):
    assert fit_max_tokens(kind, prompt, max_tokens, 128) == expected


@pytest.mark.parametrize(
    ("kind", "prompt", "max_tokens", "param"),
    [
        ("chat", 10, 119, "max_tokens"),
        ("completion", 100, 29, "max_tokens"),
        ("chat", 128, 1, "messages"),
        ("completion", 200, 128, "prompt"),
    ],
)
def test_does_not_fit(kind, prompt, max_tokens, param):
    with pytest.raises(ServingError) as caught:
        fit_max_tokens(kind, prompt, max_tokens, 128)
    info = caught.value.info
    assert (info.status, info.type, info.param, info.code) == (
        400,
        "invalid_request_error",
        param,
        "context_length_exceeded",
    )
    assert "maximum context length is 128 tokens" in info.message


def test_message_mirrors_openai():
    with pytest.raises(ServingError) as caught:
        fit_max_tokens("chat", 58, 100, 128)
    assert "you requested 158 tokens (58 in the messages, 100 in the completion)" in caught.value.info.message
