"""The worker's request-plane endpoint: ``generate``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from ... import wire
from ...engines.base import Engine

GENERATE_ENDPOINT = "generate"


def make_generate_handler(engine: Engine):
    """``GenerateRequest`` bytes in, ``GenerateOutput`` bytes out.

    When the caller cancels, the request plane cancels this generator; closing
    the engine's generator aborts the engine request and frees its KV blocks.
    """
    decode = wire.decoder(wire.GenerateRequest).decode
    encode = wire.encoder.encode

    async def generate(payload: bytes) -> AsyncGenerator[bytes, None]:
        request = decode(payload)
        # A ServingError the engine raises (a refused request) reaches the client as it is.
        async with contextlib.aclosing(engine.generate(request)) as outputs:
            async for output in outputs:
                yield encode(output)

    return generate
