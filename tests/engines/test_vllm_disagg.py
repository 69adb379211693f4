"""Two real vLLM-CPU engines with NixlConnector (kv_buffer_device cpu): a prefill engine hands its KV
to a decode engine. Greedy output must be token-for-token the aggregated output; a transfer that
cannot happen must fail the request, never decode from KV that did not arrive."""

from __future__ import annotations

import os

import psutil
import pytest
import pytest_asyncio

from inference_graph import wire
from inference_graph.core.spec import EngineSpec, KvTransferSpec
from inference_graph.engines.factory import create_engine
from inference_graph.engines.kv_transfer import KvTransferError, free_port
from support import eventually

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

PROMPTS = [
    list(range(5, 300)),  # several blocks
    [7, 8, 9] * 40 + [11],  # repetitive, a partial last block
    list(range(1000, 1033)),  # just over one block of 32
    [42] * 31,  # under one block: everything but the last token comes remotely anyway
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(tiny_model_path):
    spec = EngineSpec(max_model_len=1024, kv_cache_gib=0.25)
    started = []
    try:
        for producer in (True, False):  # a prefill worker's engine, then a decode worker's
            engine = create_engine(spec, tiny_model_path, "tiny", KvTransferSpec(), kv_producer=producer)
            await engine.start()
            started.append(engine)
        yield started
    finally:
        for engine in started:
            await engine.shutdown()


async def tokens(engine, request: wire.GenerateRequest) -> tuple[list[int], list[wire.GenerateOutput]]:
    frames = [frame async for frame in engine.generate(request)]
    return [t for f in frames for t in f.token_ids], frames


def greedy(max_tokens: int = 12) -> wire.SamplingOptions:
    return wire.SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("index", range(len(PROMPTS)))
async def test_disaggregated_greedy_output_equals_aggregated(engines, index):
    prefill, decode = engines
    prompt = PROMPTS[index]
    aggregated, _ = await tokens(prefill, wire.GenerateRequest(f"agg-{index}", prompt, greedy()))
    first, frames = await tokens(
        prefill, wire.GenerateRequest(f"p-{index}", prompt, greedy(), phase=wire.Phase.PREFILL)
    )
    params = frames[-1].kv_transfer_params
    assert len(first) == 1 and params["do_remote_prefill"] is True
    assert params["remote_port"] == prefill.kv_transfer.side_channel()[1]  # what discovery publishes
    remote, _ = await tokens(
        decode,
        wire.GenerateRequest(
            f"d-{index}", prompt, greedy(), phase=wire.Phase.DECODE, kv_transfer_params=params
        ),
    )
    assert remote == aggregated


async def test_an_unreachable_prefill_engine_fails_the_request_loudly(engines):
    prefill, decode = engines
    prompt = list(range(300, 400))
    _, frames = await tokens(prefill, wire.GenerateRequest("p-x", prompt, greedy(), phase=wire.Phase.PREFILL))
    # A prefill engine this decode engine never met, at a port nobody listens on (one it met is
    # remembered by engine id, so its port would not be used again).
    params = dict(frames[-1].kv_transfer_params, remote_engine_id="gone", remote_port=free_port("127.0.0.1"))
    request = wire.GenerateRequest(
        "d-x", prompt, greedy(), phase=wire.Phase.DECODE, kv_transfer_params=params
    )
    with pytest.raises(KvTransferError) as info:
        await tokens(decode, request)
    assert (info.value.status, info.value.type, info.value.code) == (500, "server_error", "kv_transfer_error")


async def test_params_that_are_not_a_prefill_result_are_refused(engines):
    _, decode = engines
    request = wire.GenerateRequest(
        "d-y", [1, 2, 3], greedy(), phase=wire.Phase.DECODE, kv_transfer_params={"remote_port": 1}
    )
    with pytest.raises(KvTransferError, match="lack"):
        await tokens(decode, request)


async def test_idle_nixl_engines_do_not_spin(engines):
    # NIXL's progress thread busy-polls, so it is always running (state R); engines/nixl_cpu.py turns
    # it off. An idle engine still has short bursts of work (a failed transfer's cleanup from the test
    # before, OpenMP threads spinning briefly after a step), so the check is that the engines reach
    # an instant in which none of their threads runs: a spinning thread never gives one.
    me = psutil.Process()
    cores = [p for p in me.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(cores) >= 2, cores  # the engine core processes of both engines
    await eventually(
        lambda: running_threads(cores),
        until=lambda running: not running,
        timeout=20,
        interval=0.01,
        what="an instant in which no thread of the idle engines runs",
    )


def running_threads(processes: list[psutil.Process]) -> list[str]:
    """``pid/tid name`` of every thread of ``processes`` the kernel has running or runnable now."""
    running = []
    for process in processes:
        for tid in os.listdir(f"/proc/{process.pid}/task"):
            try:
                with open(f"/proc/{process.pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:  # the thread ended meanwhile
                continue
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            if rest.split()[0] == "R":
                running.append(f"{process.pid}/{tid} {name}")
    return running
