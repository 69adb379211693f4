"""The one error model: every failure a client can see is a ``ServingError``.

A ``ServingError`` carries one ``wire.ErrorInfo`` (type, message, param, code,
HTTP status, retryable). Every role raises it, the request plane sends its
``info`` in an ERROR frame and raises it again on the caller's side
(``runtime.errors.RemoteError``), and the frontend alone turns it into an HTTP
answer (``roles.frontend.errors``). Types come from ``wire.ErrorType`` only;
docs/errors.md has the table.

Exception tree (the runtime's transport errors have a fixed type)::

    ServingError(info)
    ├── runtime.errors.RuntimeErrorBase       the runtime's own failures
    │   ├── RemoteError(info, instance_id)    the serving side sent an ERROR frame
    │   ├── NoRespondersError                 service_unavailable_error 503
    │   ├── RequestTimeoutError               service_unavailable_error 504
    │   ├── InstanceLostError                 service_unavailable_error 503
    │   ├── FramesLostError                   service_unavailable_error 503
    │   ├── ClientClosedError                 service_unavailable_error 503
    │   ├── DiscoveryUnavailableError         service_unavailable_error 503
    │   └── ProtocolError                     server_error 500
    ├── engines.kv_transfer.KvTransferError   server_error 500, code kv_transfer_error
    └── processing.errors.WorkerUnreachable   service_unavailable_error 503, before any token

Anything else that escapes a handler is a bug: the request plane and the
frontend answer it as ``server_error`` (500).
"""

from __future__ import annotations

from . import wire
from .wire import ErrorType

__all__ = [
    "ErrorType",
    "ServingError",
    "error_info",
    "for_status",
    "invalid_request",
    "server_error",
    "service_unavailable",
]


def error_info(
    type: ErrorType,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    status: int | None = None,
    retryable: bool | None = None,
) -> wire.ErrorInfo:
    """The frame for an error of ``type``; status and retryable default to the type's."""
    return wire.ErrorInfo(
        status=type.status if status is None else status,
        type=type,
        message=message,
        param=param,
        code=code,
        retryable=type.retryable if retryable is None else retryable,
    )


class ServingError(Exception):
    """A request failed; ``info`` says how the client sees it."""

    def __init__(self, info: wire.ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info

    @property
    def type(self) -> ErrorType:
        return self.info.type

    @property
    def message(self) -> str:
        return self.info.message

    @property
    def param(self) -> str | None:
        return self.info.param

    @property
    def code(self) -> str | None:
        return self.info.code

    @property
    def status(self) -> int:
        return self.info.status

    @property
    def retryable(self) -> bool:
        return self.info.retryable

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        return f"{self.status} {self.type.value}: {self.message}{where}"


def invalid_request(
    message: str, param: str | None = None, code: str | None = None, *, status: int = 400
) -> ServingError:
    """The request itself is at fault (400; 404 for an unknown model or URL)."""
    return ServingError(error_info(ErrorType.INVALID_REQUEST, message, param=param, code=code, status=status))


def service_unavailable(
    message: str, code: str | None = None, *, param: str | None = None, status: int = 503
) -> ServingError:
    """Nothing can serve the request now; the same request may succeed later (503, or 504)."""
    info = error_info(ErrorType.SERVICE_UNAVAILABLE, message, param=param, code=code, status=status)
    return ServingError(info)


def server_error(message: str, code: str | None = None, *, retryable: bool = False) -> ServingError:
    """The server failed the request (500)."""
    return ServingError(error_info(ErrorType.SERVER_ERROR, message, code=code, retryable=retryable))


def for_status(status: int, message: str, param: str | None = None, code: str | None = None) -> ServingError:
    """An error a library reported as an HTTP status (vLLM's), with the type that status has."""
    type_ = ErrorType.for_status(status)
    return ServingError(error_info(type_, message, param=param, code=code, status=status))
