"""Errors of the processor role.

Exception tree::

    Exception
    ├── ProcessingError   raised by ``Processor.process``; ``info`` becomes the
    │                     OpenAI error body and HTTP status at the frontend
    ├── WorkerError       raised by a ``WorkerClient`` stream; ``info`` says why
    │                     the worker failed (the processor re-raises it as a
    │                     ``ProcessingError`` with the same ``info``)
    └── WorkerUnreachable raised by a ``WorkerClient`` stream before its first
                          frame when the instance refused, never accepted, or
                          was lost (it died; its lease may not have expired
                          yet): nothing reached the client, so the processor
                          sends the request elsewhere

Any other exception from a worker stream (a lost instance, a broken connection)
becomes a ``ProcessingError`` with status 503.
"""

from __future__ import annotations

from .. import wire


class ProcessingError(Exception):
    """A request the processor could not serve; ``info`` says how to report it."""

    def __init__(self, info: wire.ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class WorkerError(Exception):
    """A worker reported an error for one generate stream."""

    def __init__(self, info: wire.ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ProcessingError:
    return ProcessingError(
        wire.ErrorInfo(status=400, type="invalid_request_error", message=message, param=param, code=code)
    )


def service_unavailable(message: str) -> ProcessingError:
    return ProcessingError(wire.ErrorInfo(status=503, type="service_unavailable", message=message))


class WorkerUnreachable(Exception):
    """``instance_id`` failed before its first frame; sending the request to another worker is safe."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"worker {instance_id} did not accept the request")
        self.instance_id = instance_id
