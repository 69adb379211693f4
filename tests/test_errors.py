"""The error types a client can see, pinned to their HTTP status (the table in docs/errors.md).

The oracles are the other side's own code: the openai SDK's choice of exception
class per status, and vLLM's OpenAI server's ``create_error_response``.
"""

from __future__ import annotations

from http import HTTPStatus

import httpx
import openai
import pytest

from inference_graph import errors
from inference_graph.errors import ErrorType, ServingError
from inference_graph.runtime import errors as runtime_errors

# type string, HTTP status, retryable, vLLM's type for that status (docs/errors.md)
TABLE = [
    ("invalid_request_error", 400, False, "BadRequestError"),
    ("rate_limit_error", 429, True, "Too Many Requests"),
    ("server_error", 500, False, "InternalServerError"),
    ("service_unavailable_error", 503, True, "ServiceUnavailableError"),
]


def test_the_table_lists_every_type_once():
    assert sorted(row[0] for row in TABLE) == sorted(t.value for t in ErrorType)


@pytest.mark.parametrize(("value", "status", "retryable", "vllm"), TABLE)
def test_each_type_is_pinned_to_its_status(value, status, retryable, vllm):
    kind = ErrorType(value)
    assert (kind.status, kind.retryable, kind.vllm) == (status, retryable, vllm)
    assert ErrorType.for_status(status) is kind
    info = errors.error_info(kind, "m")
    assert (info.status, info.type, info.retryable) == (status, value, retryable)


@pytest.mark.parametrize(
    ("status", "value"),
    [
        (404, "invalid_request_error"),
        (405, "invalid_request_error"),
        (422, "invalid_request_error"),
        (501, "server_error"),
        (502, "service_unavailable_error"),
        (504, "service_unavailable_error"),
    ],
)
def test_other_statuses_take_the_type_of_their_class(status, value):
    assert ErrorType.for_status(status) == value


@pytest.mark.parametrize(("value", "status", "retryable", "vllm"), TABLE)
def test_the_openai_sdk_raises_the_class_vllm_names_for_the_status(value, status, retryable, vllm):
    client = openai.OpenAI(api_key="x", base_url="http://localhost/v1")
    response = httpx.Response(status, request=httpx.Request("POST", "http://localhost/v1/completions"))
    raised = type(client._make_status_error("m", body=None, response=response))
    sdk = {429: openai.RateLimitError, 503: openai.InternalServerError}.get(status)
    # vLLM names the SDK's class where one exists for the status; 429 and 503 are HTTP phrases/its own.
    assert raised is (sdk or getattr(openai, vllm))
    assert isinstance(raised("m", response=response, body=None), openai.APIStatusError)


def test_vllm_sends_the_types_of_the_table():
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import (
        GenerationError,
        GracefulHTTPError,
        RetryableRequestError,
        VLLMValidationError,
    )

    sent = {
        400: create_error_response(VLLMValidationError("bad", parameter="n")),
        429: create_error_response(GracefulHTTPError("busy", HTTPStatus.TOO_MANY_REQUESTS)),
        500: create_error_response(GenerationError()),
        503: create_error_response(RetryableRequestError()),
    }
    assert {s: (r.error.type, r.error.code) for s, r in sent.items()} == {
        ErrorType.for_status(s).status: (ErrorType.for_status(s).vllm, s) for s in sent
    }


def test_the_runtime_errors_have_a_fixed_type():
    cases = {
        runtime_errors.NoRespondersError("s"): (503, "service_unavailable_error"),
        runtime_errors.RequestTimeoutError("s", "ack", 1.0): (504, "service_unavailable_error"),
        runtime_errors.InstanceLostError("i"): (503, "service_unavailable_error"),
        runtime_errors.ClientClosedError("closed"): (503, "service_unavailable_error"),
        runtime_errors.DiscoveryUnavailableError(["e"], "down"): (503, "service_unavailable_error"),
        runtime_errors.ProtocolError("s", "bad frame"): (500, "server_error"),
    }
    for exc, (status, value) in cases.items():
        assert isinstance(exc, ServingError)
        assert (exc.status, exc.type, exc.retryable) == (status, value, status != 500), exc


def test_a_serving_error_carries_every_field():
    exc = errors.invalid_request("too long", "messages", "context_length_exceeded")
    assert (exc.type, exc.message, exc.param, exc.code, exc.status, exc.retryable) == (
        ErrorType.INVALID_REQUEST,
        "too long",
        "messages",
        "context_length_exceeded",
        400,
        False,
    )
    assert str(exc) == "400 invalid_request_error: too long (param messages)"
