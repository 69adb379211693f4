"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the frontend answers with, whether found here (validation, unknown
model) or raised by the processor, is a ``wire.ErrorInfo``; exceptions carry it
as ``.info``.
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

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"
UNAVAILABLE = "service_unavailable_error"


class ApiError(Exception):
    """An error that becomes an OpenAI error response; ``info`` says which."""

    def __init__(self, info: wire.ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class ProcessingError(ApiError):
    """Raised by a ``ProcessorClient`` when the processor or a worker failed the request."""


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(wire.ErrorInfo(400, INVALID_REQUEST, message, param, code))


def info_of(exc: BaseException) -> wire.ErrorInfo:
    """The ``ErrorInfo`` an exception carries, or a generic 500 for anything else."""
    info = getattr(exc, "info", None)
    if isinstance(info, wire.ErrorInfo):
        return info
    log.error("unexpected error while serving a request", exc_info=exc)
    return wire.ErrorInfo(500, SERVER_ERROR, "The server had an error while processing your request.")


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_encode = msgspec.json.Encoder().encode


def error_bytes(info: wire.ErrorInfo) -> bytes:
    return _encode(_ErrorBody(_ErrorDetail(info.message, info.type, info.param, info.code)))


def error_response(info: wire.ErrorInfo) -> Response:
    return Response(error_bytes(info), status_code=info.status, media_type="application/json")


# ---------------------------------------------------------------- msgspec decode errors

# "Expected `int`, got `str` - at `$.messages[0].role`"
_AT = re.compile(r"^(?P<msg>.*) - at `\$\.?(?P<path>[^`]*)`$")
# "Object missing required field `model`"
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def from_decode_error(exc: msgspec.DecodeError) -> ApiError:
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
        kind = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
        response = error_response(wire.ErrorInfo(exc.status_code, kind, message))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def validation_error(request: Request, exc: Exception) -> Response:
        return error_response(wire.ErrorInfo(422, INVALID_REQUEST, str(exc)))

    async def api_error(request: Request, exc: Exception) -> Response:
        return error_response(info_of(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(info_of(exc))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(Exception, server_error)
