"""The processor's one error of its own; every other failure is a ``ServingError``.

``Processor.process`` raises ``inference_graph.errors.ServingError`` (before or
mid-stream): its own (``invalid_request``, ``service_unavailable``) or the one a
worker stream raised (a worker's ERROR frame arrives as ``RemoteError``, a lost
worker as ``InstanceLostError``), unchanged. Any other exception from a worker
stream becomes ``service_unavailable`` (503).

::

    ServingError
    └── WorkerUnreachable   raised by a ``WorkerClient`` stream before its first
                            frame when the instance refused, never accepted, or
                            was lost (it died; its lease may not have expired
                            yet): nothing reached the client, so the processor
                            sends the request elsewhere (a 503 if it escapes)
"""

from __future__ import annotations

from ..errors import ErrorType, ServingError, error_info


class WorkerUnreachable(ServingError):
    """``instance_id`` failed before its first frame; sending the request to another worker is safe."""

    def __init__(self, instance_id: str) -> None:
        message = f"worker {instance_id} did not accept the request"
        super().__init__(error_info(ErrorType.SERVICE_UNAVAILABLE, message))
        self.instance_id = instance_id
