"""Errors of the processor role.

Exception tree::

    Exception
    ├── ProcessingError   raised by ``Processor.process``; ``info`` becomes the
    │                     OpenAI error body and HTTP status at the frontend
    └── WorkerError       raised by a ``WorkerClient`` stream; ``info`` says why
                          the worker failed (the processor re-raises it as a
                          ``ProcessingError`` with the same ``info``)

Any other exception from a worker stream (a lost instance, a broken connection)
becomes a ``ProcessingError`` with status 503.
"""

from __future__ import annotations

from ... import wire


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
