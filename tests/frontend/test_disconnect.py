"""A client that goes away must close the processor stream (which aborts the engine request).

The fake processor's generator records when its ``finally`` runs. The app is
driven directly over ASGI with a ``receive()`` that reports ``http.disconnect``
(deterministic), and once through a real uvicorn server and socket.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import uvicorn

from inference_graph import wire
from support import eventually

from .fakes import MODEL

DEADLINE = 1.0


def _scope(path: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }


class AsgiClient:
    """Sends one request; ``gone`` makes the next ``receive()`` report a disconnect."""

    def __init__(self, app, path: str, body: dict) -> None:
        self.gone = asyncio.Event()
        self.sent: list[dict] = []
        self.first_body = asyncio.Event()
        self._body = json.dumps(body).encode()
        self._task = asyncio.ensure_future(app(_scope(path), self._receive, self._send))

    async def _receive(self) -> dict:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_body.set()

    async def finished(self) -> None:
        await asyncio.wait_for(self._task, DEADLINE)


def hello_then_hang(request: wire.ProcessRequest):
    return [wire.ProcessOutput(0, "Hello", 1), 30.0, wire.ProcessOutput(0, "never", 1, finish_reason="stop")]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_disconnect_mid_stream(app, fake, path):
    fake.script = hello_then_hang
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}], "prompt": "x"}
    client = AsgiClient(app, path, body)
    await asyncio.wait_for(client.first_body.wait(), DEADLINE)
    assert fake.closed == []
    client.gone.set()
    await asyncio.wait_for(fake.closed_event.wait(), DEADLINE)
    await client.finished()
    assert fake.closed == [fake.requests[0].request_id]
    assert b"never" not in b"".join(m.get("body", b"") for m in client.sent)
    metrics = app.state.metrics.registry
    labels = {"endpoint": path.rsplit("/", 1)[-1].replace("chat/", ""), "model": MODEL}
    labels["endpoint"] = "chat_completions" if "chat" in path else "completions"
    assert metrics.get_sample_value("ig_frontend_requests_total", {**labels, "status": "499"}) == 1
    assert metrics.get_sample_value("ig_frontend_requests_in_flight", labels) == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_before_first_token(app, fake, stream):
    fake.script = lambda req: [30.0]
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "x"}]}
    client = AsgiClient(app, "/v1/chat/completions", body)
    await fake.wait_for_requests(1)
    client.gone.set()
    await asyncio.wait_for(fake.closed_event.wait(), DEADLINE)
    await client.finished()
    assert client.sent == []  # nothing was committed


async def test_disconnect_closes_every_batched_prompt(app, fake):
    fake.script = lambda req: [30.0]
    client = AsgiClient(app, "/v1/completions", {"model": MODEL, "prompt": ["a", "b", "c"], "stream": True})
    await fake.wait_for_requests(3)
    assert len(fake.requests) == 3
    client.gone.set()
    await client.finished()
    assert sorted(fake.closed) == sorted(r.request_id for r in fake.requests)


async def test_disconnect_over_a_real_socket(app, fake):
    fake.script = hello_then_hang
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    try:
        await eventually(lambda: server.started, what="uvicorn to start listening")
        port = server.servers[0].sockets[0].getsockname()[1]
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if "Hello" in line:
                        break
            # leaving the block closes the response (and the connection): a disconnect
        await asyncio.wait_for(fake.closed_event.wait(), DEADLINE)
        assert fake.closed == [fake.requests[0].request_id]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 5)
