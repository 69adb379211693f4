"""Exceptions raised by the runtime, as one tree so callers can catch at the right level.

::

    RuntimeErrorBase                  anything the runtime raises on purpose
    +-- RequestError(info)            raised BY a handler: becomes an ERROR frame with ``info``
    +-- RemoteError(info)             the serving side sent an ERROR frame
    +-- NoRespondersError(subject)    nobody subscribes to the request subject
    +-- RequestTimeoutError(...)      no ACK in time, or a gap between frames too long
    +-- InstanceLostError(id)         the serving instance left discovery mid-stream
    +-- ProtocolError(...)            a frame out of order or undecodable
    +-- ClientClosedError             the EndpointClient was closed mid-stream
    +-- DiscoveryUnavailableError     no etcd endpoint answered

``RequestError`` and ``RemoteError`` both carry a ``wire.ErrorInfo`` so the HTTP
status, OpenAI error type and message survive every hop unchanged: a handler on
the worker raises ``RequestError(ErrorInfo(400, ...))``, the processor receives
``RemoteError`` with the same info, and may re-raise it as ``RequestError`` to
pass it on to the frontend.
"""

from __future__ import annotations

from .. import wire


class RuntimeErrorBase(Exception):
    """Base of every error the runtime raises on purpose."""


class RequestError(RuntimeErrorBase):
    """Raised by an endpoint handler to fail a request with a structured error."""

    def __init__(self, info: wire.ErrorInfo):
        self.info = info
        super().__init__(f"{info.status} {info.type}: {info.message}")

    @classmethod
    def of(cls, status: int, type_: str, message: str, **kwargs: str | None) -> RequestError:
        """Shorthand: ``RequestError.of(400, "invalid_request_error", "bad prompt")``."""
        return cls(wire.ErrorInfo(status=status, type=type_, message=message, **kwargs))


class RemoteError(RuntimeErrorBase):
    """The serving instance ended the stream with an ERROR frame."""

    def __init__(self, info: wire.ErrorInfo, instance_id: str = ""):
        self.info = info
        self.instance_id = instance_id
        super().__init__(f"{info.status} {info.type}: {info.message}")

    @property
    def status(self) -> int:
        return self.info.status


class NoRespondersError(RuntimeErrorBase):
    """No server subscribes to the subject (the component or instance is not running)."""

    def __init__(self, subject: str):
        self.subject = subject
        super().__init__(f"no responders on {subject}")


class RequestTimeoutError(RuntimeErrorBase):
    """A deadline passed: ``phase`` is ``"ack"`` (nobody accepted) or ``"idle"`` (stream stalled)."""

    def __init__(self, subject: str, phase: str, timeout: float, instance_id: str = ""):
        self.subject = subject
        self.phase = phase
        self.timeout = timeout
        self.instance_id = instance_id
        super().__init__(f"no {phase} frame within {timeout:g}s on {subject} ({instance_id or '?'})")


class InstanceLostError(RuntimeErrorBase):
    """The instance serving a stream disappeared (lease expired, crashed, stopped)."""

    def __init__(self, instance_id: str):
        self.instance_id = instance_id
        super().__init__(f"instance {instance_id} was lost mid-stream")


class ProtocolError(RuntimeErrorBase):
    """A frame arrived out of order, twice, or could not be decoded."""

    def __init__(self, subject: str, detail: str):
        self.subject = subject
        self.detail = detail
        super().__init__(f"protocol error on {subject}: {detail}")


class ClientClosedError(RuntimeErrorBase):
    """``EndpointClient.close()`` ended the streams still open on it."""


class DiscoveryUnavailableError(RuntimeErrorBase):
    """None of the etcd endpoints answered."""

    def __init__(self, endpoints: list[str], cause: str):
        self.endpoints = list(endpoints)
        self.cause = cause
        super().__init__(f"no etcd endpoint answered ({', '.join(endpoints)}): {cause}")
