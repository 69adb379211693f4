"""The frontend's processor client over a real nats-server: frames lost in transport (a NATS
restart) before the first output send the request again; after it, the error ends the request."""

from __future__ import annotations

import pytest

from inference_graph import wire
from inference_graph.roles.frontend.remote import NatsProcessorClient
from inference_graph.runtime.errors import FramesLostError
from inference_graph.runtime.request_plane import EndpointClient

KIND = wire.FrameKind


def request() -> wire.ProcessRequest:
    return wire.ProcessRequest(
        request_id="req",
        model="m",
        kind="completion",
        sampling=wire.SamplingOptions(max_tokens=2),
        prompt="hi",
    )


def output(text: str, finish: str | None = None) -> bytes:
    return wire.encoder.encode(wire.ProcessOutput(index=0, text=text, num_tokens=1, finish_reason=finish))


async def raw_processor(nc, namespace: str, scripts: list[list[wire.ResponseFrame]]) -> list[str]:
    """A processor that answers the n-th request with ``scripts[n]``; returns the reply subjects seen."""
    replies: list[str] = []

    async def serve(msg):
        script = scripts[len(replies)]
        replies.append(msg.reply)
        for frame in script:
            await nc.publish(msg.reply, wire.encoder.encode(frame))

    await nc.subscribe(f"ig.{namespace}.processor.process", cb=serve)
    await nc.flush()
    return replies


def ack() -> wire.ResponseFrame:
    return wire.ResponseFrame(KIND.ACK, 0, instance_id="p1")


async def test_frames_lost_before_the_first_output_send_the_request_again(nc, namespace):
    lost_first = [ack(), wire.ResponseFrame(KIND.DATA, 2, payload=output("b"))]  # frame 1 never came
    whole = [
        ack(),
        wire.ResponseFrame(KIND.DATA, 1, payload=output("a")),
        wire.ResponseFrame(KIND.DATA, 2, payload=output("b", "length")),
        wire.ResponseFrame(KIND.END, 3),
    ]
    replies = await raw_processor(nc, namespace, [lost_first, whole])
    client = EndpointClient(nc, namespace, "processor")
    try:
        outputs = [o async for o in NatsProcessorClient(client).process(request())]
    finally:
        await client.close()
    assert "".join(o.text for o in outputs) == "ab" and outputs[-1].finish_reason == "length"
    assert len(replies) == 2 and replies[0] != replies[1]


async def test_frames_lost_after_an_output_end_the_request(nc, namespace):
    gap_later = [
        ack(),
        wire.ResponseFrame(KIND.DATA, 1, payload=output("a")),
        wire.ResponseFrame(KIND.DATA, 3, payload=output("c")),  # frame 2 never came
    ]
    replies = await raw_processor(nc, namespace, [gap_later, gap_later])
    client = EndpointClient(nc, namespace, "processor")
    seen = []
    try:
        with pytest.raises(FramesLostError) as exc:
            async for o in NatsProcessorClient(client).process(request()):
                seen.append(o.text)
    finally:
        await client.close()
    assert seen == ["a"] and len(replies) == 1  # the client already has "a": not sent again
    assert exc.value.retryable and exc.value.status == 503
