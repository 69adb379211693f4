"""Exceptions raised by the runtime: ``ServingError``s with a fixed type each.

::

    ServingError (inference_graph.errors)
    +-- RuntimeErrorBase                  anything the runtime raises on purpose
        +-- RemoteError(info)             the serving side sent an ERROR frame: its ``info``
        +-- NoRespondersError(subject)    nobody subscribes to the request subject     503
        +-- RequestTimeoutError(...)      no ACK, no frame/heartbeat, no NATS in time   504
        +-- InstanceLostError(id)         the serving instance left discovery mid-stream 503
        +-- FramesLostError(...)          frames of a stream lost in transport          503
        +-- ClientClosedError             the EndpointClient was closed mid-stream      503
        +-- DiscoveryUnavailableError     no etcd endpoint answered                     503
        +-- ProtocolError(...)            a frame out of order or undecodable           500

The numbers are the HTTP status each answers with: ``service_unavailable_error``
for all but ``ProtocolError`` (``server_error``). A handler fails a request by
raising any ``ServingError``: the server sends its ``info`` in an ERROR frame and
the caller's stream raises ``RemoteError`` with the same info, so the type,
status, message and param survive every hop unchanged.
"""

from __future__ import annotations

from .. import wire
from ..errors import ErrorType, ServingError, error_info


class RuntimeErrorBase(ServingError):
    """Base of every error the runtime raises on purpose; ``TYPE`` and ``STATUS`` fix its info."""

    TYPE = ErrorType.SERVICE_UNAVAILABLE
    STATUS = 503

    def __init__(self, message: str) -> None:
        super().__init__(error_info(self.TYPE, message, status=self.STATUS))


class RemoteError(RuntimeErrorBase):
    """The serving instance ended the stream with an ERROR frame; ``info`` is the frame's."""

    def __init__(self, info: wire.ErrorInfo, instance_id: str = ""):
        ServingError.__init__(self, info)
        self.instance_id = instance_id


class NoRespondersError(RuntimeErrorBase):
    """No server subscribes to the subject (the component or instance is not running)."""

    def __init__(self, subject: str):
        self.subject = subject
        super().__init__(f"no responders on {subject}")


class RequestTimeoutError(RuntimeErrorBase):
    """A deadline passed: ``phase`` is ``"ack"`` (nobody accepted), ``"idle"`` (no frame and no
    heartbeat within the liveness deadline: the stream is dead) or ``"connect"`` (NATS stayed down)."""

    STATUS = 504

    def __init__(self, subject: str, phase: str, timeout: float, instance_id: str = ""):
        self.subject = subject
        self.phase = phase
        self.timeout = timeout
        self.instance_id = instance_id
        what = {"ack": "ACK", "connect": "NATS connection"}.get(phase, "frame and no heartbeat")
        super().__init__(f"no {what} within {timeout:g}s on {subject} ({instance_id or '?'})")


class InstanceLostError(RuntimeErrorBase):
    """The instance serving a stream disappeared (lease expired, crashed, stopped)."""

    def __init__(self, instance_id: str):
        self.instance_id = instance_id
        super().__init__(f"instance {instance_id} was lost mid-stream")


class FramesLostError(RuntimeErrorBase):
    """Frames of a stream never arrived (a later frame or a heartbeat says they were sent): the
    transport lost them, e.g. across a NATS restart. Retryable: the processor migrates the stream."""

    def __init__(self, subject: str, expected: int, seen: int, instance_id: str = ""):
        self.subject = subject
        self.instance_id = instance_id
        super().__init__(
            f"frames {expected}..{seen} of the stream on {subject} ({instance_id or '?'}) were lost in transport"
        )


class ProtocolError(RuntimeErrorBase):
    """A frame arrived out of order, twice, or could not be decoded."""

    TYPE = ErrorType.SERVER_ERROR
    STATUS = 500

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
