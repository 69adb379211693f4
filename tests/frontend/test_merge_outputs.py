"""Processor outputs that queued up in the frontend become one SSE event per choice run."""

from __future__ import annotations

from inference_graph import wire
from inference_graph.roles.frontend.remote import merge_outputs


def test_merges_consecutive_frames_of_one_unfinished_choice():
    lp = [wire.TextLogprob("a", -0.1), wire.TextLogprob("b", -0.2), wire.TextLogprob("c", -0.3)]
    usage = wire.Usage(5, 3)
    outs = [
        wire.ProcessOutput(0, "a", 1, logprobs=lp[:1]),
        wire.ProcessOutput(0, "b", 1, logprobs=lp[1:2]),
        wire.ProcessOutput(0, "c", 1, "stop", "c", lp[2:], usage),
        wire.ProcessOutput(0, "", 0),  # after a finish: never merged into it
    ]
    merged = merge_outputs(outs)
    assert merged[0] == wire.ProcessOutput(0, "abc", 3, "stop", "c", lp, usage)
    assert merged[1:] == outs[3:]


def test_keeps_choices_apart_and_in_order():
    outs = [
        wire.ProcessOutput(0, "a", 1),
        wire.ProcessOutput(1, "x", 1),
        wire.ProcessOutput(1, "y", 1),
        wire.ProcessOutput(0, "b", 1),
    ]
    merged = merge_outputs(outs)
    assert [(o.index, o.text, o.num_tokens) for o in merged] == [(0, "a", 1), (1, "xy", 2), (0, "b", 1)]
