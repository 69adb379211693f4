"""The one place an error becomes HTTP: OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

Every failure the frontend answers with, whether found here (validation, unknown
model) or raised by the processor, a worker or the request plane, is an
``inference_graph.errors.ServingError``; its ``info`` gives the HTTP status and
the body. A non-streaming request gets the body with that status; a streaming
one whose headers are sent gets the same body as its last SSE event
(``data: {"error": ...}``). Anything else is a bug, answered as ``server_error``
(500). docs/errors.md has the table of types.
"""

from __future__ import annotations

import logging
import re

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from inference_graph import wire
from inference_graph.errors import ErrorType, ServingError, error_info, invalid_request, server_error

log = logging.getLogger(__name__)


def info_of(exc: BaseException) -> wire.ErrorInfo:
    """The ``ErrorInfo`` of a ``ServingError``, or a generic 500 for anything else."""
    if isinstance(exc, ServingError):
        return exc.info
    log.error("unexpected error while serving a request", exc_info=exc)
    return server_error("The server had an error while processing your request.").info


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


def error_bytes(info: wire.ErrorInfo) -> bytes:
    """The OpenAI error body (also the payload of a stream's error event)."""
    return _encode(_ErrorBody(_ErrorDetail(info.message, info.type.value, info.param, info.code)))


def error_response(info: wire.ErrorInfo) -> Response:
    return Response(error_bytes(info), status_code=info.status, media_type="application/json")


# ---------------------------------------------------------------- msgspec decode errors

# "Expected `int`, got `str` - at `$.messages[0].role`"
_AT = re.compile(r"^(?P<msg>.*) - at `\$\.?(?P<path>[^`]*)`$")
# "Object missing required field `model`"
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def from_decode_error(exc: msgspec.DecodeError) -> ServingError:
    """Map a msgspec decode failure to a 400 naming the offending field."""
    if not isinstance(exc, msgspec.ValidationError):
        return invalid_request(f"The request body is not valid JSON: {exc}")
    text = str(exc)
    path = ""
    if m := _AT.match(text):
        text, path = m["msg"], m["path"].replace("[...]", "")  # "[...]": a dict value
    if m := _MISSING.match(text):
        param = f"{path}.{m['field']}" if path else m["field"]
        return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if not path:
        return invalid_request(f"The request body must be a JSON object: {text}", None)
    return invalid_request(f"Invalid value for '{path}': {text}", path)


# ---------------------------------------------------------------- handlers for framework errors


def install_handlers(app: FastAPI) -> None:
    """Answer routing and framework errors in OpenAI's shape too."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}"
        else:
            message = str(exc.detail)
        info = error_info(ErrorType.for_status(exc.status_code), message, status=exc.status_code)
        response = error_response(info)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def validation_error(request: Request, exc: Exception) -> Response:
        return error_response(invalid_request(str(exc), status=422).info)

    async def any_error(request: Request, exc: Exception) -> Response:
        return error_response(info_of(exc))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServingError, any_error)
    app.add_exception_handler(Exception, any_error)
