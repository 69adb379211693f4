"""An ASGI response that commits its status only once the first bytes exist,
and stops producing them when the client goes away.

The body comes from an async generator. Nothing is sent until it yields its
first chunk, so an error raised before that (e.g. the processor rejecting a
prompt that is too long) still becomes a proper HTTP error response; errors
after that are the generator's to report in-band (an SSE ``error`` event).

Disconnects are watched on ``receive()`` for the whole response, including
the wait for the first token and non-streaming requests (uvicorn's ``send``
silently drops bytes after a disconnect, so a response that only notices
failed sends would keep generating): on ``http.disconnect`` the producing task
is cancelled once (plain asyncio, so the generator's cleanup can still await)
and the generator is closed, which closes the processor stream and so aborts
the engine request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import error_bytes, info_of
from .metrics import CLIENT_CLOSED, RequestObserver

DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_JSON = b"application/json"


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DeferredResponse(Response):
    """Streams an SSE body (``stream=True``) or sends a single JSON chunk."""

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        *,
        stream: bool,
        observer: RequestObserver | None = None,
        request_id: str = "",
    ) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [(b"x-request-id", request_id.encode())] if request_id else []
        self._body = body
        self._stream = stream
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        produce = asyncio.ensure_future(self._produce(send))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((produce, watch), return_when=asyncio.FIRST_COMPLETED)
            if not produce.done():  # the client is gone
                produce.cancel()
                await asyncio.wait((produce,))
            if produce.cancelled() or isinstance(produce.exception(), OSError):
                if self._observer is not None:
                    self._observer.status = CLIENT_CLOSED
            elif (exc := produce.exception()) is not None:
                raise exc
        finally:
            for task in (produce, watch):
                task.cancel()
            await asyncio.gather(produce, watch, return_exceptions=True)
            if self._observer is not None:
                self._observer.finish()

    async def _produce(self, send: Send) -> None:
        body = self._body
        try:
            try:
                first = await anext(body)
            except StopAsyncIteration:
                first = b""
            except Exception as exc:
                info = info_of(exc)
                if self._observer is not None:
                    self._observer.status = info.status
                payload = error_bytes(info)
                await send(self._start(info.status, _JSON, len(payload)))
                await send({"type": "http.response.body", "body": payload})
                return
            if not self._stream:  # a single JSON document
                await send(self._start(200, _JSON, len(first)))
                await send({"type": "http.response.body", "body": first})
                return
            headers = _SSE_HEADERS + self.raw_headers
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await body.aclose()

    def _start(self, status: int, media_type: bytes, length: int) -> dict[str, Any]:
        headers = [
            (b"content-type", media_type),
            (b"content-length", str(length).encode()),
            *self.raw_headers,
        ]
        return {"type": "http.response.start", "status": status, "headers": headers}
