"""The worker's request-plane endpoint: ``generate``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ... import wire
from ...engines.base import Engine
from ...engines.errors import EngineRequestError
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
        except EngineRequestError as exc:  # a request the engine refused: status and param reach the client
            raise RequestError(exc.to_error_info()) from None

    return generate
