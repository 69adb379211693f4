"""Worker outputs that queued up in the processor are handled as one output."""

from __future__ import annotations

from inference_graph import wire
from inference_graph.processing.remote import merge_outputs


def test_merge_concatenates_tokens_and_logprobs_and_keeps_the_last_finish():
    lp = [wire.TokenLogprob(i, -0.1 * i) for i in range(4)]
    outs = [
        wire.GenerateOutput([1, 2], None, 10, 4, lp[:2]),
        wire.GenerateOutput([3], None, 10, 4, lp[2:3]),
        wire.GenerateOutput([4], "stop", 10, 4, lp[3:], stop_token_id=4),
    ]
    merged = merge_outputs(outs)
    assert merged == wire.GenerateOutput([1, 2, 3, 4], "stop", 10, 4, lp, stop_token_id=4)


def test_merge_without_logprobs():
    merged = merge_outputs([wire.GenerateOutput([1], None, 3), wire.GenerateOutput([2], None, 3)])
    assert merged.token_ids == [1, 2] and merged.logprobs is None and merged.finish_reason is None
