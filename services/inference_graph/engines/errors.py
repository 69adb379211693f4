"""Errors an engine raises for one request, with what the client should see.

The worker turns an ``EngineRequestError`` into an ERROR frame with
``to_error_info()`` (``runtime.errors.RequestError(err.to_error_info())``), so
the HTTP status, OpenAI error type, message and offending parameter reach the
frontend unchanged. Anything else an engine raises is an internal error (500).
"""

from __future__ import annotations

from .. import wire

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class EngineRequestError(Exception):
    """The engine refused or failed one request.

    ``status`` is the HTTP status the frontend should return (400 for a bad
    request such as a prompt longer than the context window, 503 when the
    engine is overloaded or dead, 500 for an internal failure); ``param`` names
    the request field at fault when there is one.
    """

    def __init__(self, status: int, message: str, param: str | None = None, *, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _TYPES.get(status, "internal_error" if status >= 500 else "invalid_request_error")

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        return f"{self.status} {self.type}: {self.message}{where}"

    def to_error_info(self) -> wire.ErrorInfo:
        return wire.ErrorInfo(status=self.status, type=self.type, message=self.message, param=self.param)
