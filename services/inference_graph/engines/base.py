"""The interface every engine plug-in implements.

The worker role serves an ``Engine`` on the request plane and relays its KV
events and load to the event plane; it never imports a concrete engine except
through ``create_engine``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from .. import wire
from .kv_transfer import KvTransfer


@dataclass(frozen=True)
class EngineInfo:
    """Capacity facts the worker publishes in discovery."""

    block_size: int
    num_kv_blocks: int
    max_model_len: int


@dataclass(frozen=True)
class EngineLoad:
    running: int
    waiting: int
    kv_usage: float  # fraction of KV blocks in use, 0..1


class Engine(Protocol):
    info: EngineInfo

    @property
    def kv_transfer(self) -> KvTransfer | None:
        """Set when the engine can run PREFILL/DECODE phases (disaggregation); read-only here, so an
        engine may hold its own transfer type."""

    async def start(self) -> None:
        """Load the model; ``info`` is valid afterwards."""

    def generate(self, request: wire.GenerateRequest) -> AsyncGenerator[wire.GenerateOutput, None]:
        """Stream outputs. Closing the iterator early (``aclose`` or task
        cancellation) must abort the engine request and free its KV blocks.

        ``request.phase`` PREFILL: compute the prompt, sample one token, keep the KV for a
        remote decode and put ``kv_transfer_params`` on the last frame. DECODE: pull the KV
        that ``request.kv_transfer_params`` names, then decode; an unusable transfer raises
        ``kv_transfer.KvTransferError`` before any token."""

    async def release_kv(self, request_id: str) -> None:
        """A finished PREFILL request's KV is no longer needed (its decode side has it, or
        never will); the engine may free the blocks it kept for the transfer."""

    def load(self) -> EngineLoad:
        """Current load; cheap, called periodically."""

    def kv_events(self) -> AsyncIterator[list[wire.KvEvent]]:
        """KV cache events in engine order, normalised to ``wire`` events."""

    async def shutdown(self) -> None:
        """Stop the engine and release its resources."""
