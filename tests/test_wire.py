"""Golden bytes for every cross-process struct.

Structs are encoded by position (array_like), so reordering or removing a field
breaks old peers silently. These vectors fail when that happens. A new field
appended last with a default keeps the old vectors decodable; update the
vector only for a deliberate, versioned change.
"""

import msgspec
import pytest

from inference_graph import wire as w

GOLDEN = [
    (
        "ErrorInfo",
        "w.ErrorInfo(status=503, type=w.ErrorType.SERVICE_UNAVAILABLE, message='gone', code='worker_lost', retryable=True)",
        "96cd01f7b9736572766963655f756e617661696c61626c655f6572726f72a4676f6e65c0ab776f726b65725f6c6f7374c3",
    ),
    (
        "ResponseFrame",
        "w.ResponseFrame(kind=w.FrameKind.DATA, seq=3, payload=b'ab', instance_id='i1')",
        "950103c4026162c0a26931",
    ),
    ("CancelRequest", "w.CancelRequest(request_id='r1')", "91a27231"),
    (
        "SamplingOptions",
        "w.SamplingOptions(max_tokens=8, min_tokens=1, temperature=0.5, top_p=0.9, top_k=5, seed=7, presence_penalty=0.1, frequency_penalty=0.2, repetition_penalty=1.1, stop_token_ids=[2], ignore_eos=True, logprobs=2)",
        "9c0801cb3fe0000000000000cb3feccccccccccccd0507cb3fb999999999999acb3fc999999999999acb3ff199999999999a9102c302",
    ),
    (
        "GenerateRequest",
        "w.GenerateRequest(request_id='r1', token_ids=[1, 2, 3], sampling=w.SamplingOptions(max_tokens=4), model='m', phase=w.Phase.DECODE, kv_transfer_params={'remote_port': 5600})",
        "96a27231930102039c0400cb3ff0000000000000cb3ff000000000000000c0cb0000000000000000cb0000000000000000cb3ff000000000000090c2c0a16d0281ab72656d6f74655f706f7274cd15e0",
    ),
    (
        "TokenLogprob",
        "w.TokenLogprob(token_id=5, logprob=-0.5, top=[(5, -0.5), (6, -1.5)])",
        "9305cbbfe0000000000000929205cbbfe00000000000009206cbbff8000000000000",
    ),
    (
        "GenerateOutput",
        "w.GenerateOutput(token_ids=[4, 5], finish_reason='stop', num_prompt_tokens=3, num_cached_tokens=2, logprobs=[w.TokenLogprob(token_id=4, logprob=-1.0)], stop_token_id=5, kv_transfer_params={'do_remote_prefill': True})",
        "97920405a473746f700302919304cbbff0000000000000900581b1646f5f72656d6f74655f70726566696c6cc3",
    ),
    ("ChatMessage", "w.ChatMessage(role='user', content='hi', name='bob')", "93a475736572a26869a3626f62"),
    (
        "ProcessRequest",
        "w.ProcessRequest(request_id='r1', model='m', kind='chat', sampling=w.SamplingOptions(), messages=[w.ChatMessage(role='user', content='hi')], prompt=None, stop=['.'], n=2, echo=True, include_stop_str_in_output=True, skip_special_tokens=False, add_generation_prompt=False, chat_template_kwargs={'x': 1})",
        "9da27231a16da4636861749c1000cb3ff0000000000000cb3ff000000000000000c0cb0000000000000000cb0000000000000000cb3ff000000000000090c2c09193a475736572a26869c0c091a12e02c3c3c2c281a17801",
    ),
    (
        "TextLogprob",
        "w.TextLogprob(token='a', logprob=-0.25, bytes=[97], top=[('a', -0.25, [97])])",
        "94a161cbbfd000000000000091619193a161cbbfd00000000000009161",
    ),
    ("Usage", "w.Usage(prompt_tokens=3, completion_tokens=4, cached_tokens=2, migrations=1)", "9403040201"),
    (
        "ProcessOutput",
        "w.ProcessOutput(index=1, text='hi', num_tokens=2, finish_reason='stop', stop_reason='.', usage=w.Usage(prompt_tokens=1, completion_tokens=2))",
        "9701a2686902a473746f70a12ec09401020000",
    ),
    (
        "KvEventBatch",
        "w.KvEventBatch(instance_id='i1', seq=9, timestamp=1.5, events=[w.BlockStored(block_hashes=[1, 2], parent_block_hash=None, token_ids=[1, 2, 3, 4], block_size=2), w.BlockRemoved(block_hashes=[1]), w.AllBlocksCleared()])",
        "94a2693109cb3ff80000000000009395ab426c6f636b53746f726564920102c094010203040292ac426c6f636b52656d6f766564910191b0416c6c426c6f636b73436c6561726564",
    ),
    (
        "LoadMetrics",
        "w.LoadMetrics(instance_id='i1', timestamp=2.5, running=3, waiting=1, kv_usage=0.25, num_kv_blocks=100, prefill_queue_depth=2, local_prefills=5, remote_prefills=7, kv_transfer_failures=1)",
        "9aa26931cb40040000000000000301cb3fd00000000000006402050701",
    ),
    ("RouteRequest", "w.RouteRequest(token_ids=[1, 2, 3], workers=['a', 'b'])", "929301020392a161a162"),
    (
        "RouteDecision",
        "w.RouteDecision(worker='a', expected_hit_tokens=64, overlap_blocks=2)",
        "93a1614002",
    ),
    (
        "PrefillRequest",
        "w.PrefillRequest(request_id='r1', token_ids=[1, 2], sampling=w.SamplingOptions(max_tokens=4), decode_instance_id='d1', deadline=12.5, model='m')",
        "96a272319201029c0400cb3ff0000000000000cb3ff000000000000000c0cb0000000000000000cb0000000000000000cb3ff000000000000090c2c0a26431cb4029000000000000a16d",
    ),
    (
        "PrefillResult",
        "w.PrefillResult(request_id='r1', prefill_instance_id='p1', kv_transfer_params={'remote_port': 5600}, error=w.ErrorInfo(status=500, type=w.ErrorType.SERVER_ERROR, message='x'))",
        "94a27231a2703181ab72656d6f74655f706f7274cd15e096cd01f4ac7365727665725f6572726f72a178c0c0c2",
    ),
    (
        "PrefillReceipt",
        "w.PrefillReceipt(status=w.ReceiptStatus.HELD)",
        "9100",
    ),
]


@pytest.mark.parametrize(("name", "expr", "golden"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_encoding_matches_golden_bytes(name, expr, golden):
    obj = eval(expr, {"w": w})
    assert w.encoder.encode(obj).hex() == golden


@pytest.mark.parametrize(("name", "expr", "golden"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bytes_decode_to_the_same_value(name, expr, golden):
    obj = eval(expr, {"w": w})
    assert w.decoder(type(obj)).decode(bytes.fromhex(golden)) == obj


def test_instance_info_is_json_by_field_name():
    info = w.InstanceInfo(instance_id="i1", namespace="g", component="decode", block_size=32)
    data = msgspec.json.encode(info)
    assert msgspec.json.decode(data) == {
        "instance_id": "i1",
        "namespace": "g",
        "component": "decode",
        "block_size": 32,
    }
    assert msgspec.json.decode(data, type=w.InstanceInfo) == info


# Vectors written before the disaggregation fields were appended: old peers' bytes still decode.
PRE_DISAGGREGATION = [
    (
        "w.GenerateRequest(request_id='r1', token_ids=[1, 2, 3], sampling=w.SamplingOptions(max_tokens=4), model='m')",
        "94a27231930102039c0400cb3ff0000000000000cb3ff000000000000000c0cb0000000000000000cb0000000000000000cb3ff000000000000090c2c0a16d",
    ),
    (
        "w.GenerateOutput(token_ids=[4, 5], finish_reason='stop', num_prompt_tokens=3, num_cached_tokens=2, logprobs=[w.TokenLogprob(token_id=4, logprob=-1.0)], stop_token_id=5)",
        "96920405a473746f700302919304cbbff00000000000009005",
    ),
    (
        "w.LoadMetrics(instance_id='i1', timestamp=2.5, running=3, waiting=1, kv_usage=0.25, num_kv_blocks=100)",
        "96a26931cb40040000000000000301cb3fd000000000000064",
    ),
]


@pytest.mark.parametrize(("expr", "golden"), PRE_DISAGGREGATION)
def test_messages_from_before_the_disaggregation_fields_decode(expr, golden):
    obj = eval(expr, {"w": w})
    assert w.decoder(type(obj)).decode(bytes.fromhex(golden)) == obj


# A Usage from before ``migrations`` was appended (3 fields) decodes as never migrated; an older
# peer ignores the extra trailing field.
def test_usage_from_before_the_migrations_field_decodes():
    usage = w.Usage(prompt_tokens=3, completion_tokens=4, cached_tokens=2)
    assert w.decoder(w.Usage).decode(bytes.fromhex("93030402")) == usage

    class OldUsage(msgspec.Struct, array_like=True):
        prompt_tokens: int
        completion_tokens: int
        cached_tokens: int = 0

    assert msgspec.msgpack.decode(w.encoder.encode(usage), type=OldUsage) == OldUsage(3, 4, 2)


# An ErrorInfo from before ``retryable`` was appended (5 fields) still decodes, as not retryable.
def test_an_error_from_before_the_retryable_field_decodes():
    old = "95cd0190b5696e76616c69645f726571756573745f6572726f72a3626164aa6d61785f746f6b656e73a178"
    info = w.decoder(w.ErrorInfo).decode(bytes.fromhex(old))
    assert info == w.ErrorInfo(400, w.ErrorType.INVALID_REQUEST, "bad", param="max_tokens", code="x")
    assert info.type is w.ErrorType.INVALID_REQUEST and info.retryable is False


def test_an_error_type_outside_the_enum_does_not_decode():
    invented = msgspec.msgpack.encode([503, "service_unavailable", "gone"])
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value"):
        w.decoder(w.ErrorInfo).decode(invented)
