"""One failure class, one answer, whichever hop failed: frontend, processor, router, worker.

A graph of the real processes (frontend, processor, KV router, one simulated worker) over real
NATS and etcd; every request the processor serves is routed by the router. A bad request is refused
by the frontend or the processor (the frontend validates all a worker's engine would refuse, so
the worker's and the router's own refusals are asked for on their endpoints: the same frame the
processor would pass on). An unavailable service is a worker that stops answering mid-stream
(SIGSTOP: frozen, so the launcher does not restart it and no new worker can serve in its place), a
request sent while its lease still lists it, and the frontend's own 503 once the lease expired. The
client must see OpenAI's shape and one type string per class (docs/errors.md).
"""

from __future__ import annotations

import json
import os
import signal

import httpx
import nats
import pytest

from inference_graph import wire
from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery
from inference_graph.runtime.errors import RemoteError
from inference_graph.runtime.request_plane import EndpointClient

from .conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SHAPE = {"message", "type", "param", "code"}
OVERRIDES = [
    *TINY_OVERRIDES,
    "engine.type=mocker",
    "engine.mocker.timing=polynomial",  # a 4000-token stream lasts ~25 s
    "services.decode.replicas=1",
    # The frozen worker's stream must end with the error, not wait for another worker to migrate to.
    "routing.migrationLimit=0",
]


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == SHAPE, body
    return body["error"]


async def test_each_hop_answers_one_failure_class_with_one_type(start_graph, infrastructure):
    namespace = "error-shape"
    graph = start_graph(namespace, config="configs/agg_router.yaml", overrides=OVERRIDES)
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    workers = await discovery.watch_instances(namespace, Role.DECODE.value)
    routers = await discovery.watch_instances(namespace, Role.ROUTER.value)
    await workers.wait_for(lambda instances: len(instances) == 1, 60)
    await routers.wait_for(lambda instances: len(instances) == 1, 60)

    async with httpx.AsyncClient(base_url=graph.base_url, timeout=60) as http:
        # Bad requests: (who refuses it, request, param, words of that hop's message).
        bad = [
            ("frontend", {"prompt": []}, "prompt", "must not be empty"),
            ("processor", {"prompt": "hello " * 5000}, "prompt", "maximum context length"),
        ]
        for hop, fields, param, words in bad:
            for stream in (False, True):
                body = {"model": "tiny", "max_tokens": 4, "stream": stream, **fields}
                response = await http.post("/v1/completions", json=body)
                assert response.status_code == 400, (hop, response.text)
                error = error_of(response)
                assert (error["type"], error["param"]) == ("invalid_request_error", param), (hop, error)
                assert words in error["message"], (hop, error)

        nc = await nats.connect(infrastructure["NATS_SERVER"])
        worker = EndpointClient(nc, namespace, Role.DECODE.value)
        bad_sampling = wire.SamplingOptions(temperature=-1.0)
        with pytest.raises(RemoteError) as refused_by_worker:
            payload = wire.encoder.encode(wire.GenerateRequest("bad", [1, 2, 3], bad_sampling, "tiny"))
            [_ async for _ in worker.stream("generate", payload)]
        router = EndpointClient(nc, namespace, Role.ROUTER.value)
        with pytest.raises(RemoteError) as refused_by_router:
            [_ async for _ in router.stream("decide", wire.encoder.encode(wire.RouteRequest([1, 2], [])))]
        for refused in (refused_by_worker.value, refused_by_router.value):
            assert (refused.status, refused.type) == (400, "invalid_request_error"), refused
        assert refused_by_worker.value.param == "temperature"
        await worker.close()
        await router.close()
        await nc.close()

        # Unavailable: the only worker stops answering while it streams.
        long = {"model": "tiny", "prompt": "hello", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        async with http.stream("POST", "/v1/completions", json=long) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            (victim,) = workers.instances.values()
            os.kill(victim.pid, signal.SIGSTOP)
            # Sent while discovery still lists the frozen worker: no ACK comes (504), or the
            # processor already counts it lost (503): one class, one type.
            refused = await http.post(
                "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}
            )
            rest = [line async for line in lines if line.startswith("data: ")]
        events = [json.loads(line.removeprefix("data: ")) for line in rest if line != "data: [DONE]"]
        assert "data: [DONE]" not in rest
        mid_stream = events[-1]
        assert set(mid_stream) == {"error"} and set(mid_stream["error"]) == SHAPE, mid_stream
        assert mid_stream["error"]["type"] == "service_unavailable_error", mid_stream
        assert refused.status_code in (503, 504), refused.text
        assert error_of(refused)["type"] == "service_unavailable_error"

        await workers.wait_for(lambda instances: not instances, 30)  # its lease expired
        cold = await http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert cold.status_code == 503, cold.text
        error = error_of(cold)
        assert (error["type"], error["code"]) == ("service_unavailable_error", "model_not_ready")
    os.kill(victim.pid, signal.SIGKILL)  # a frozen process ignores the launcher's SIGTERM
    await workers.close()
    await routers.close()
    await discovery.close()
