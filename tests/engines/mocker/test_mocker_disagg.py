"""The simulated engine's disaggregated phases: PREFILL returns transfer params, DECODE receives KV
for a simulated time while holding its blocks (no preemption, no free on abort until it ends)."""

from __future__ import annotations

import asyncio

import pytest

from inference_graph import wire
from inference_graph.core.spec import EngineSpec, MockerSpec
from inference_graph.engines.kv_transfer import KvTransferError, SimulatedTransfer, kv_bytes_per_token
from inference_graph.engines.mocker import MockerEngine
from inference_graph.engines.mocker.kv_cache import KvCache
from inference_graph.engines.mocker.scheduler import Scheduler, Sequence, Status
from inference_graph.engines.mocker.tokens import TokenSampler, Vocab

BS = 4
VOCAB = Vocab.plain(1000, eos_token_id=2, special=(0, 1))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(num_blocks=64, transfer_s=5.0) -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    sched = Scheduler(
        KvCache(num_blocks, BS),
        TokenSampler(VOCAB, 0.0),
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_model_len=num_blocks * BS,
        transfer_seconds=lambda tokens: transfer_s,
        clock=clock,
    )
    return sched, clock


def seq(request_id, prompt, max_tokens=4, **kwargs) -> Sequence:
    return Sequence(request_id, list(prompt), BS, key=1, max_tokens=max_tokens, **kwargs)


def test_remote_sequence_holds_its_blocks_and_computes_nothing_until_the_transfer_ends():
    sched, clock = make()
    remote = seq("r", range(10, 30), remote_kv=True)  # 20 tokens: 5 blocks
    sched.add(remote)
    step = sched.schedule()
    assert not step and remote.status == Status.RUNNING
    assert len(remote.blocks) == 5 and sched.next_transfer_end() == 5.0
    clock.now = 4.9
    assert not sched.schedule()
    clock.now = 5.0
    step = sched.schedule()
    assert step.scheduled == [(remote, 1)]  # only the last prompt token is computed locally
    sched.complete(step)
    assert remote.num_outputs == 1


def test_a_receiving_sequence_is_never_preempted():
    sched, _ = make(num_blocks=8)
    remote = seq("r", range(10, 26), remote_kv=True)  # 4 blocks, receiving
    sched.add(remote)
    sched.schedule()
    local = seq("l", range(100, 112), max_tokens=8)  # 3 blocks, then grows past the last free block
    sched.add(local)
    while local.status != Status.FINISHED and local.num_preemptions == 0:
        sched.complete(sched.schedule())
    assert remote.transfer_until is not None and len(remote.blocks) == 4
    assert local.num_preemptions >= 1  # the local sequence gave way, not the receiving one
    sched.kv.check([s for s in (remote, local) if s.blocks])


def test_abort_during_a_transfer_frees_the_blocks_only_when_it_ends():
    sched, clock = make()
    remote = seq("r", range(10, 30), remote_kv=True)
    sched.add(remote)
    sched.schedule()
    assert sched.abort(remote)
    assert sched.kv.num_used == 5  # the connector may still be writing them
    clock.now = 5.0
    sched.schedule()
    assert sched.kv.num_used == 0 and not sched.has_work()


def test_kv_bytes_per_token_comes_from_the_model_config(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}'
    )
    assert kv_bytes_per_token(str(tmp_path)) == 2 * 32 * 8 * 128 * 2  # Llama-3-8B: 128 KiB per token


@pytest.fixture
async def pair(model_dir):
    """A prefill and a decode engine that exchange KV at 1 GB/s, 1 MB per token (1 ms per token)."""
    engines = [
        MockerEngine(
            EngineSpec(type="mocker", block_size=BS, mocker=MockerSpec(timing="instant")),
            model_dir,
            kv_transfer=SimulatedTransfer(1.0, 1_000_000, BS),
        )
        for _ in range(2)
    ]
    for engine in engines:
        await engine.start()
    yield engines
    for engine in engines:
        await engine.shutdown()


async def test_prefill_then_decode_moves_the_prompt(pair):
    prefill, decode = pair
    prompt = list(range(10, 210))  # 200 tokens: ~0.2 s of simulated transfer
    sampling = wire.SamplingOptions(max_tokens=5, temperature=0.0)
    frames = [
        f
        async for f in prefill.generate(wire.GenerateRequest("p", prompt, sampling, phase=wire.Phase.PREFILL))
    ]
    params = frames[-1].kv_transfer_params
    assert sum(len(f.token_ids) for f in frames) == 1  # a prefill samples one token
    assert params["num_tokens"] == 200 and params["connector"] == "simulated"
    assert prefill.kv.num_used == 50  # 200 tokens in blocks of 4, kept for the decode side to read

    loop = asyncio.get_running_loop()
    start = loop.time()
    request = wire.GenerateRequest("d", prompt, sampling, phase=wire.Phase.DECODE, kv_transfer_params=params)
    stream = decode.generate(request)
    first = await anext(stream)
    assert loop.time() - start >= 0.19  # 199 tokens x 1 ms: the transfer, not a prefill (instant timing)
    rest = [f async for f in stream]
    assert sum(len(f.token_ids) for f in (first, *rest)) == 5
    assert (first, *rest)[-1].finish_reason == "length"
    await prefill.release_kv("p")  # the prefill worker, once the decode worker has the KV
    assert prefill.kv.num_used == 0 and prefill.kv.cached_hashes()  # freed, still a prefix cache


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"connector": "nixl"},
        {"connector": "simulated", "num_tokens": 3, "block_size": 8, "kv_bytes_per_token": 1_000_000},
    ],
)
async def test_unusable_transfer_params_fail_the_request_loudly(pair, params):
    _, decode = pair
    request = wire.GenerateRequest(
        "d", [5, 6, 7], wire.SamplingOptions(max_tokens=2), phase=wire.Phase.DECODE, kv_transfer_params=params
    )
    with pytest.raises(KvTransferError) as info:
        await anext(decode.generate(request))
    assert (info.value.status, info.value.type, info.value.code) == (500, "server_error", "kv_transfer_error")


async def test_an_engine_without_transfer_refuses_disaggregated_phases(make_engine):
    engine = await make_engine(block_size=BS)
    request = wire.GenerateRequest("p", [5, 6, 7], wire.SamplingOptions(), phase=wire.Phase.PREFILL)
    with pytest.raises(KvTransferError, match=r"disaggregation\.enabled"):
        await anext(engine.generate(request))


def test_nixl_side_channel_host_is_the_pod_ip_in_kubernetes(monkeypatch):
    from inference_graph.engines.kv_transfer import NixlTransfer

    monkeypatch.delenv("VLLM_NIXL_SIDE_CHANNEL_HOST", raising=False)
    monkeypatch.setenv(
        "POD_IP", "127.0.0.2"
    )  # a local address other than the default (all 127/8 is loopback)
    assert NixlTransfer(producer=True).side_channel()[0] == "127.0.0.2"
    monkeypatch.delenv("POD_IP")
    first, second = NixlTransfer(producer=True), NixlTransfer(producer=False)
    assert first.side_channel()[0] == "127.0.0.1"
    assert first.port != second.port  # a free port per engine


def test_nixl_kv_role_follows_the_worker_role():
    # vLLM deprecates kv_both for NixlConnector: a prefill worker's engine produces KV, a decode
    # worker's consumes it (and still prefills locally the prompts that stay local).
    from inference_graph.core.spec import EngineSpec, KvTransferSpec
    from inference_graph.engines.factory import create_engine

    def role(**kw):
        return create_engine(
            EngineSpec(), "/models/x", "m", KvTransferSpec(), **kw
        ).kv_transfer.kv_transfer_config()["kv_role"]

    assert role(kv_producer=True) == "kv_producer"
    assert role() == "kv_consumer"
