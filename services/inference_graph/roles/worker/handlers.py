"""The worker's request-plane endpoint: ``generate``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ... import wire
from ...engines.base import Engine
from ...runtime.errors import RequestError

GENERATE_ENDPOINT = "generate"


def make_generate_handler(engine: Engine):
    """``GenerateRequest`` bytes in, ``GenerateOutput`` bytes out.

    When the caller cancels, the request plane cancels this generator; closing
    the engine's generator aborts the engine request and frees its KV blocks.
    """
    decode = wire.decoder(wire.GenerateRequest).decode
    encode = wire.encoder.encode

    async def generate(payload: bytes) -> AsyncIterator[bytes]:
        request = decode(payload)
        try:
            async with contextlib.aclosing(engine.generate(request)) as outputs:
                async for output in outputs:
                    yield encode(output)
        except Exception as exc:
            info = getattr(exc, "info", None)
            if isinstance(info, wire.ErrorInfo):  # a request the engine rejected
                raise RequestError(info) from None
            raise

    return generate
