"""Fixtures for the router's tests: simulated workers that publish KV events and answer snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from inference_graph import wire
from inference_graph.core.spec import EngineSpec, MockerSpec
from inference_graph.engines.mocker import MockerEngine
from inference_graph.roles.worker.kv_snapshot import KvMirror
from inference_graph.runtime.event_plane import KV_SNAPSHOT_ENDPOINT, EventPublisher
from inference_graph.runtime.request_plane import EndpointServer


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory) -> str:
    """What the simulated engine reads from a model: its config files only."""
    root = tmp_path_factory.mktemp("fake-model")
    (root / "config.json").write_text(json.dumps({"vocab_size": 512, "eos_token_id": 2, "bos_token_id": 1}))
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [2]}))
    added = [{"id": i, "content": f"<s{i}>", "special": True} for i in range(4)]
    (root / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    return str(root)


class SimWorker:
    """A simulated engine wired like ``roles.worker.service.WorkerInstance``: events relayed
    through an ``EventPublisher`` whose batches a ``KvMirror`` records, and ``kv_snapshot`` served."""

    def __init__(self, nc, namespace: str, instance_id: str, engine: MockerEngine) -> None:
        self.instance_id = instance_id
        self.engine = engine
        self.mirror = KvMirror(instance_id, engine.info.block_size)
        self.publisher = EventPublisher(nc, namespace, instance_id, on_batch=self.mirror.record)
        self.server = EndpointServer(nc, namespace, "decode", instance_id)
        self._relay: asyncio.Task | None = None
        self.removed_blocks = 0  # evictions announced: proves a workload evicted
        self.stopped = False

    async def start(self) -> None:
        await self.server.serve(KV_SNAPSHOT_ENDPOINT, self.mirror.make_handler())
        self._relay = asyncio.create_task(self._relay_events())

    async def _relay_events(self) -> None:
        async for events in self.engine.kv_events():
            self.removed_blocks += sum(
                len(e.block_hashes) for e in events if isinstance(e, wire.BlockRemoved)
            )
            await self.publisher.publish_kv(events)

    def cached(self) -> set[int]:
        """The engine's own cache (the simulated engine's hashes are the router's)."""
        return self.engine.kv.cached_hashes()

    async def stop(self) -> None:
        """Idempotent: a test may stop a worker (a crash) before the fixture's teardown does."""
        if self.stopped:
            return
        self.stopped = True
        await self.server.stop(drain_timeout=1)
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
        await self.engine.shutdown()


@pytest.fixture
async def sim_workers(nc, namespace, fake_model_dir):
    """``await sim_workers(n, block_size=16, num_kv_blocks=32)`` -> started ``SimWorker``s."""
    started: list[SimWorker] = []

    async def make(n: int, *, block_size: int, num_kv_blocks: int) -> list[SimWorker]:
        workers = []
        for _ in range(n):
            spec = EngineSpec(
                type="mocker",
                block_size=block_size,
                max_model_len=num_kv_blocks * block_size,
                mocker=MockerSpec(timing="instant", num_kv_blocks=num_kv_blocks),
            )
            engine = MockerEngine(spec, fake_model_dir, "mock")
            await engine.start()
            worker = SimWorker(nc, namespace, f"w{len(started)}", engine)
            await worker.start()
            started.append(worker)
            workers.append(worker)
        return workers

    yield make
    for worker in started:  # a failing stop fails the test: teardown errors are not suppressed
        await worker.stop()
