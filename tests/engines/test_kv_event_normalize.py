"""Normalisation of vLLM's KV event payloads (no engine needed)."""

from __future__ import annotations

import hashlib

import msgspec

from inference_graph import wire
from inference_graph.engines.vllm_kv_events import decode_payload, normalize_hash
from support import eventually


def test_bytes_and_int_hashes_agree():
    digest = hashlib.sha256(b"block").digest()
    # vLLM's int form (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1) is the low 64 bits.
    as_int = int.from_bytes(digest, "big") & ((1 << 64) - 1)
    assert normalize_hash(digest) == as_int
    assert normalize_hash(as_int) == as_int
    assert normalize_hash(-1) == (1 << 64) - 1
    assert 0 <= normalize_hash(digest) < 1 << 64


def test_decode_payload_as_observed_on_vllm_0_32():
    h1, h2 = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
    payload = msgspec.msgpack.encode(
        [
            1.5,
            [
                {
                    "type": "BlockStored",
                    "block_hashes": [h1, 7],
                    "parent_block_hash": h2,
                    "token_ids": list(range(64)),
                    "block_size": 32,
                    "lora_id": None,
                    "medium": "GPU",
                    "group_idx": 0,
                },
                {
                    "type": "BlockStored",
                    "block_hashes": [1],
                    "parent_block_hash": None,
                    "token_ids": [1] * 32,
                    "block_size": 32,
                    "medium": "CPU",
                },  # an offload tier: not this engine's cache
                {"type": "BlockRemoved", "block_hashes": [h1], "medium": "GPU"},
                {"type": "AllBlocksCleared"},
                {"type": "SomethingNew"},
            ],
            0,
        ]
    )
    ts, events = decode_payload(payload)
    assert ts == 1.5
    assert events == [
        wire.BlockStored(
            block_hashes=[normalize_hash(h1), 7],
            parent_block_hash=normalize_hash(h2),
            token_ids=list(range(64)),
            block_size=32,
        ),
        wire.BlockRemoved(block_hashes=[normalize_hash(h1)]),
        wire.AllBlocksCleared(),
    ]


async def test_subscriber_reports_sequence_gaps(tmp_path, caplog):
    import asyncio

    import zmq

    from inference_graph.engines.vllm_kv_events import KvEventSubscriber

    endpoint = f"ipc://{tmp_path}/pub.sock"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # an XPUB sees the subscription arrive: no slow-joiner race
    pub.bind(endpoint)
    sub = KvEventSubscriber(endpoint, "kv")
    stored = {
        "type": "BlockStored",
        "block_hashes": [1],
        "parent_block_hash": None,
        "token_ids": [0] * 32,
        "block_size": 32,
    }

    def send(seq: int) -> None:
        pub.send_multipart([b"kv", seq.to_bytes(8, "big"), msgspec.msgpack.encode([0.0, [stored], 0])])

    try:
        assert pub.poll(5000), "the subscriber never subscribed"
        assert pub.recv() == b"\x01kv"
        batches = sub.batches()
        for seq in (0, 1, 3):
            send(seq)
        for _ in range(3):
            batch = await asyncio.wait_for(anext(batches), 5)
            assert batch[0].block_hashes == [1]
        assert sub.gaps == 1
        assert "expected batch 2, got 3" in caplog.text
        pending = asyncio.ensure_future(anext(batches))
        # close() while the iteration waits for the next batch (its receive is pending)
        await eventually(lambda: sub._pending is not None, what="the iteration to wait for the next batch")
        sub.close()
        try:
            await asyncio.wait_for(pending, 5)
            raise AssertionError("expected the iteration to end")
        except StopAsyncIteration:
            pass  # close() ends the iteration instead of raising
    finally:
        sub.close()
        pub.close(linger=0)
        ctx.term()
