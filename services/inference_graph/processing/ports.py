"""The processor's I/O boundaries, as Protocols.

Production implementations speak NATS and watch discovery; tests use in-memory
ones. The processor only ever sees these two interfaces.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from .. import wire


class WorkerClient(Protocol):
    def generate(
        self, request: wire.GenerateRequest, instance_id: str
    ) -> AsyncGenerator[wire.GenerateOutput, None]:
        """Stream a worker's outputs for ``request`` from instance ``instance_id``.

        The result is an async generator (it has ``aclose``). Closing it before
        the last frame (``aclose`` or task cancellation) must cancel the
        worker's engine request. A worker-reported failure is raised as a
        ``ServingError`` (it reaches the client unchanged); a lost instance
        raises a ``ServingError`` or any other exception; neither may hang forever.
        """
        ...


class WorkerDirectory(Protocol):
    def instances(self) -> list[str]:
        """Ids of the live decode workers for this model (a cheap snapshot read)."""
        ...
