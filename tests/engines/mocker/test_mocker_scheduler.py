"""The simulated scheduler: chunked prefill, admission, preemption, stop rules (no event loop)."""

from __future__ import annotations

from inference_graph.engines.mocker.kv_cache import KvCache
from inference_graph.engines.mocker.scheduler import Scheduler, Sequence, Status
from inference_graph.engines.mocker.tokens import TokenSampler, Vocab

BS = 4
VOCAB = Vocab.plain(1000, eos_token_id=2, special=(0, 1))


def make(num_blocks=64, max_num_seqs=8, budget=64, max_model_len=None, eos_probability=0.0) -> Scheduler:
    return Scheduler(
        KvCache(num_blocks, BS),
        TokenSampler(VOCAB, eos_probability),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=max_model_len or num_blocks * BS,
    )


def seq(request_id, prompt, max_tokens=8, key=1, **kwargs) -> Sequence:
    kwargs.setdefault("eos_ids", VOCAB.eos_token_ids)
    return Sequence(request_id, list(prompt), BS, key=key, max_tokens=max_tokens, **kwargs)


def run(sched: Scheduler, limit: int = 10_000) -> list:
    steps = []
    while sched.has_work():
        step = sched.schedule()
        steps.append(step)
        sched.complete(step)
        assert len(steps) < limit
    return steps


def test_chunked_prefill_respects_the_token_budget():
    sched = make(budget=32)
    a = seq("a", range(10, 110), max_tokens=3)
    sched.add(a)
    steps = run(sched)
    assert [n for s in steps for _, n in s.scheduled] == [32, 32, 32, 4, 1, 1]
    assert [s.prefill_tokens for s in steps] == [32, 32, 32, 4, 0, 0]
    assert [s.decode_batch for s in steps] == [0, 0, 0, 0, 1, 1]
    assert a.num_outputs == 3 and a.finish_reason == "length"


def test_budget_is_shared_and_decodes_go_first():
    sched = make(budget=20)
    a = seq("a", range(10, 18), max_tokens=5)
    sched.add(a)
    sched.complete(sched.schedule())  # a prefilled, one token out
    b = seq("b", range(100, 150), max_tokens=2)
    sched.add(b)
    step = sched.schedule()
    assert step.scheduled == [(a, 1), (b, 19)]
    assert (step.prefill_tokens, step.decode_batch) == (19, 1)
    sched.complete(step)
    while sched.has_work():
        step = sched.schedule()
        assert sum(n for _, n in step.scheduled) <= 20
        sched.complete(step)


def test_max_num_seqs_caps_running():
    sched = make(max_num_seqs=2)
    for i in range(5):
        sched.add(seq(f"r{i}", range(10 * i + 10, 10 * i + 15)))
    sched.complete(sched.schedule())
    assert len(sched.running) == 2 and len(sched.waiting) == 3
    run(sched)


def test_admission_waits_for_free_blocks():
    sched = make(num_blocks=10, budget=8)  # 40 tokens of KV
    a = seq("a", range(10, 34), max_tokens=4)  # 24 tokens -> 7 blocks by the end
    b = seq("b", range(100, 124), max_tokens=4)
    sched.add(a)
    sched.add(b)
    sched.complete(sched.schedule())
    # b's whole prompt (6 blocks) must fit before it is admitted, though its first chunk would.
    assert sched.running == [a] and list(sched.waiting) == [b]
    while a.status != Status.FINISHED:
        sched.complete(sched.schedule())
        assert b.status == Status.WAITING or a.status == Status.FINISHED
    run(sched)
    assert b.num_outputs == 4 and sched.num_preemptions == 0


def test_prefix_hit_is_capped_below_the_prompt_length():
    sched = make()
    a = seq("a", range(10, 18))  # exactly two blocks
    sched.add(a)
    run(sched)
    b = seq("b", range(10, 18))
    c = seq("c", range(10, 19))
    sched.add(b)
    sched.add(c)
    step = sched.schedule()
    assert b.num_cached_tokens == 4  # the last token must be computed: one block recomputed
    assert c.num_cached_tokens == 8
    assert step.scheduled == [(b, 4), (c, 1)]
    run(sched)


def test_preemption_recomputes_and_gives_the_same_tokens():
    prompts = [range(10 + 40 * i, 30 + 40 * i) for i in range(4)]

    def outputs(num_blocks):
        sched = make(num_blocks=num_blocks, budget=64)
        seqs = [seq(f"r{i}", p, max_tokens=24, key=i) for i, p in enumerate(prompts)]
        for s in seqs:
            sched.add(s)
        steps = run(sched)
        assert all(s.finish_reason == "length" and s.num_outputs == 24 for s in seqs)
        assert sched.kv.num_used == 0
        return [s.output_ids for s in seqs], sched.num_preemptions, steps

    ample, ample_preempted, _ = outputs(num_blocks=64)
    tight, tight_preempted, steps = outputs(num_blocks=16)  # 4 x 44 tokens need 44 blocks
    assert ample_preempted == 0
    assert tight_preempted > 0
    assert any(s.preempted for s in steps)
    assert tight == ample


def test_preempted_victim_is_the_last_running():
    sched = make(num_blocks=6, budget=64)
    a = seq("a", range(10, 18), max_tokens=12)  # 5 blocks each by the end, 6 in all
    b = seq("b", range(50, 58), max_tokens=12)
    sched.add(a)
    sched.add(b)
    while True:
        step = sched.schedule()
        if step.preempted:
            break
        sched.complete(step)
    assert step.preempted == [b] and sched.waiting[0] is b and b.num_computed == 0 and not b.blocks
    sched.complete(step)
    run(sched)
    assert a.num_outputs == b.num_outputs == 12


def test_stop_token_and_min_tokens():
    sched = make()
    probe = seq("probe", range(10, 20), max_tokens=10)
    sched.add(probe)
    run(sched)
    stop = probe.output_ids[3]
    s = seq("s", range(10, 20), max_tokens=10, stop_token_ids=frozenset({stop}))
    sched.add(s)
    run(sched)
    assert s.finish_reason == "stop" and s.stop_token_id == stop
    assert s.output_ids == probe.output_ids[:4]
    m = seq("m", range(10, 20), max_tokens=10, min_tokens=6, stop_token_ids=frozenset({stop}))
    sched.add(m)
    run(sched)
    assert stop not in m.output_ids[:6] and m.num_outputs >= 6


def test_eos_probability_and_ignore_eos():
    sched = make(eos_probability=0.3)
    stopped = [seq(f"e{i}", range(10, 20), max_tokens=200, key=i) for i in range(20)]
    ignoring = [seq(f"i{i}", range(10, 20), max_tokens=50, key=i, ignore_eos=True) for i in range(5)]
    early = seq("min", range(10, 20), max_tokens=50, min_tokens=30)
    for s in [*stopped, *ignoring, early]:
        sched.add(s)
    run(sched)
    assert all(s.finish_reason == "stop" and s.output_ids[-1] == 2 for s in stopped)
    assert all(s.stop_token_id is None for s in stopped)
    assert sum(s.num_outputs for s in stopped) / len(stopped) < 10  # geometric, mean ~3
    assert all(s.num_outputs == 50 and 2 not in s.output_ids for s in ignoring)
    assert early.num_outputs >= 30 and 2 not in early.output_ids[:30]


def test_no_eos_by_default_and_context_limit():
    sched = make(num_blocks=16, max_model_len=40)
    s = seq("s", range(10, 30), max_tokens=1000)
    sched.add(s)
    run(sched)
    assert s.finish_reason == "length" and s.num_tokens == 40
    assert not set(s.output_ids) & {0, 1, 2}  # special tokens are never drawn


def test_abort_frees_everywhere():
    sched = make(max_num_seqs=1)
    a, b = seq("a", range(10, 30), max_tokens=50), seq("b", range(40, 60))
    sched.add(a)
    sched.add(b)
    sched.complete(sched.schedule())
    assert sched.abort(b) and sched.abort(a)
    assert not sched.abort(a)
    assert not sched.has_work() and sched.kv.num_used == 0 and a.finish_reason == "abort"
