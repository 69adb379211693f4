"""The frontend's two I/O boundaries, as Protocols.

The HTTP app depends only on these: tests use in-memory implementations, the
runtime wires them to the request plane (NATS) and discovery (etcd).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

import msgspec

from inference_graph import wire


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    """What the frontend knows about one served model."""

    name: str
    max_model_len: int
    created: int = 0  # unix seconds
    owned_by: str = "inference-graph"
    ready: bool = False  # at least one worker is registered for it
    # Sampling defaults for fields the client leaves out (the model's
    # generation_config, as vLLM applies it): temperature, top_p, top_k,
    # repetition_penalty, presence_penalty, frequency_penalty.
    sampling_defaults: dict[str, float] = {}


class ProcessorClient(Protocol):
    """Sends one request to a processor and streams its outputs back.

    ``process`` returns an async iterator (usually an async generator) of
    ``ProcessOutput`` frames; frames of different choices (``n > 1``) may be
    interleaved and carry their ``index``. Failures are raised as
    ``inference_graph.errors.ServingError``: e.g. ``invalid_request_error``
    (400) with param ``messages``/``prompt``/``max_tokens`` when the prompt
    does not fit the context, ``service_unavailable_error`` (503) when the
    worker is lost.

    The frontend closes the iterator early (``aclose()``, or cancellation of a
    pending ``__anext__``) when the HTTP client goes away: the implementation
    must then cancel the engine request.
    """

    def process(self, request: wire.ProcessRequest) -> AsyncGenerator[wire.ProcessOutput, None]: ...


class ModelDirectory(Protocol):
    """A snapshot of the models that can be served, keyed by model name.

    Called on every request: keep it a cheap in-memory read.
    """

    def models(self) -> dict[str, ModelCard]: ...
