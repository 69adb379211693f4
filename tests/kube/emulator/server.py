"""Serve the emulated API on a free loopback port from a background thread, so subprocesses (kubectl,
a kopf operator, Helm's Go client) and in-process clients can all reach it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .api import Api
from .handlers import Handlers


def kubeconfig(url: str) -> dict[str, Any]:
    """A kubeconfig for the emulator at `url` (any token is accepted: there is no authentication)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "emulator"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": "default"}}
        ],
        "current-context": "emulator",
    }


class EmulatorServer:
    def __init__(self, api: Api | None = None, host: str = "127.0.0.1", port: int = 0):
        self.api = api or Api()
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-api-emulator", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(kubeconfig(self.url)))
        return path

    def start(self) -> EmulatorServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        self.api.lifecycle.readiness.defer = self._defer
        return self

    def _defer(self, action: Callable[[], Any]) -> None:
        self._loop.call_soon_threadsafe(action)

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", Handlers(self.api).handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # open watches end here, while the loop still runs, rather than being collected after it closed
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
