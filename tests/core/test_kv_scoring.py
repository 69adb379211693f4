"""KV routing policy: table-driven scorer cases, weights, clamping, tie-break and temperature."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.core.kv_index import KvIndex
from inference_graph.core.kv_scoring import (
    PRODUCED,
    SCORERS,
    InflightPrefill,
    KvPolicy,
    RequestContext,
    build_scorers,
    combine,
    expected_hit_tokens,
    pick,
)

BS = 4
W = ["a", "b", "c"]


def load(running: int = 0, waiting: int = 0, kv_usage: float = 0.0) -> wire.LoadMetrics:
    return wire.LoadMetrics("x", 0.0, running, waiting, kv_usage)


def ctx(num_blocks=4, overlap=None, load_=None, inflight=None) -> RequestContext:
    return RequestContext(
        num_tokens=num_blocks * BS + 1,
        block_size=BS,
        block_hashes=list(range(num_blocks)),
        overlap=overlap or {},
        load=load_ or {},
        inflight=inflight or {},
    )


# ---------------------------------------------------------------- one table per scorer

SCORER_CASES = {
    "prefix_overlap": [
        ("no blocks cached", ctx(overlap={}), {}, {"a": 0.0, "b": 0.0, "c": 0.0}),
        ("fraction of blocks", ctx(overlap={"a": 4, "b": 1}), {}, {"a": 1.0, "b": 0.25, "c": 0.0}),
        ("prompt shorter than a block", ctx(num_blocks=0), {}, {"a": 0.0, "b": 0.0, "c": 0.0}),
    ],
    "kv_usage": [
        (
            "one minus usage",
            ctx(load_={"a": load(kv_usage=0.9), "b": load(kv_usage=0.0), "c": load(kv_usage=0.5)}),
            {},
            {"a": pytest.approx(0.1), "b": 1.0, "c": 0.5},
        ),
        ("no metrics yet: idle", ctx(load_={"a": load(kv_usage=1.0)}), {}, {"a": 0.0, "b": 1.0, "c": 1.0}),
    ],
    "queue_depth": [
        (
            "min-max of running + waiting",
            ctx(load_={"a": load(running=4), "b": load(running=2, waiting=2), "c": load(running=2)}),
            {},
            {"a": 0.0, "b": 0.0, "c": 1.0},
        ),
        (
            "waiting weighs more",
            ctx(load_={"a": load(running=4), "b": load(running=2, waiting=2), "c": load(running=2)}),
            {"waiting_weight": 2.0},
            {"a": 0.5, "b": 0.0, "c": 1.0},
        ),
        (
            "all equal: all best",
            ctx(load_={w: load(running=3) for w in W}),
            {},
            {"a": 1.0, "b": 1.0, "c": 1.0},
        ),
    ],
    "inflight_prefill": [
        ("nothing in flight", ctx(), {}, {"a": 1.0, "b": 1.0, "c": 1.0}),
        (
            "pending over saturation",
            ctx(inflight={"a": 1000, "b": 4000}),
            {"saturation_tokens": 2000},
            {"a": 0.5, "b": -1.0, "c": 1.0},  # -1 is clamped to 0 by combine
        ),
    ],
}


@pytest.mark.parametrize(
    ("name", "case", "params", "expected"),
    [
        pytest.param(name, c, p, e, id=f"{name}: {label}")
        for name, cases in SCORER_CASES.items()
        for label, c, p, e in cases
    ],
)
def test_scorer(name, case, params, expected):
    scorer = SCORERS[name](**params)
    assert scorer.name == name
    assert scorer.score(case, W) == expected


def test_every_registered_scorer_has_a_table():
    assert set(SCORERS) == set(SCORER_CASES)


# ---------------------------------------------------------------- combination


def test_combine_is_a_weighted_mean_of_clamped_scores():
    scored = [({"a": 1.0, "b": 0.0}, 3.0), ({"a": 1.5, "b": -2.0, "c": float("nan")}, 1.0)]
    assert combine(scored, ["a", "b", "c"]) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert combine([({"a": 0.5, "b": 1.0}, 1.0), ({"a": 1.0, "b": 0.0}, 3.0)], ["a", "b"]) == {
        "a": pytest.approx(0.875),
        "b": pytest.approx(0.25),
    }


@pytest.mark.parametrize(
    ("config", "names", "weights"),
    [
        ({"prefix_overlap": 1.0, "kv_usage": 0.3}, ["prefix_overlap", "kv_usage"], [1.0, 0.3]),
        ({"prefix_overlap": 1.0, "queue_depth": 0}, ["prefix_overlap"], [1.0]),  # weight 0: left out
        ({"inflight_prefill": {"weight": 0.5, "saturation_tokens": 10}}, ["inflight_prefill"], [0.5]),
    ],
)
def test_build_scorers(config, names, weights):
    built = build_scorers(config)
    assert [s.name for s, _ in built] == names and [w for _, w in built] == weights


@pytest.mark.parametrize(
    "config", [{"nope": 1.0}, {"kv_usage": -1.0}, {"kv_usage": 0.0}, {"queue_depth": {"bogus": 1}}]
)
def test_build_scorers_rejects(config):
    with pytest.raises((ValueError, TypeError)):
        build_scorers(config)


def test_scorer_reading_an_unproduced_field_is_rejected(monkeypatch):
    class Psychic:
        name = "psychic"
        consumes = frozenset({"future_load"})

        def score(self, ctx, workers):
            return {}

    monkeypatch.setitem(SCORERS, "psychic", Psychic)
    with pytest.raises(ValueError, match="future_load"):
        build_scorers({"psychic": 1.0})


def test_every_scorer_reads_only_produced_fields():
    assert all(factory().consumes <= PRODUCED for factory in SCORERS.values())


def test_weights_decide_between_cache_and_load():
    index = KvIndex(BS)
    prompt = list(range(32))
    index.apply(wire.KvEventBatch("hot", 1, 0.0, [stored(prompt)]))
    metrics = {"hot": load(running=10, kv_usage=0.9), "cold": load(running=0, kv_usage=0.1)}
    cache_first = KvPolicy(index, {"prefix_overlap": 1.0, "kv_usage": 0.3, "queue_depth": 0.3}, seed=1)
    load_first = KvPolicy(index, {"prefix_overlap": 0.1, "kv_usage": 1.0, "queue_depth": 1.0}, seed=1)
    assert cache_first.decide(prompt, ["hot", "cold"], metrics).worker == "hot"
    assert load_first.decide(prompt, ["hot", "cold"], metrics).worker == "cold"


# ---------------------------------------------------------------- picking


def test_argmax_and_random_tie_break():
    rng = random.Random(0)
    assert pick({"a": 0.2, "b": 0.9, "c": 0.5}, 0.0, rng) == "b"
    counts = Counter(pick({"a": 0.7, "b": 0.7, "c": 0.1}, 0.0, rng) for _ in range(400))
    assert set(counts) == {"a", "b"} and min(counts.values()) > 150
    with pytest.raises(ValueError):
        pick({}, 0.0, rng)


def test_temperature_samples_softmax():
    rng = random.Random(42)
    scores = {"a": 1.0, "b": 0.5, "c": 0.0}
    n = 4000
    counts = Counter(pick(scores, 0.5, rng) for _ in range(n))
    # softmax(score / 0.5): weights e^2 : e^1 : 1 -> 0.665, 0.245, 0.090
    assert counts["a"] / n == pytest.approx(0.665, abs=0.03)
    assert counts["b"] / n == pytest.approx(0.245, abs=0.03)
    assert counts["c"] / n == pytest.approx(0.090, abs=0.02)
    hot = Counter(pick(scores, 100.0, rng) for _ in range(n))  # high temperature: near uniform
    assert all(abs(hot[w] / n - 1 / 3) < 0.04 for w in scores)
    cold = Counter(pick(scores, 0.01, rng) for _ in range(200))  # low temperature: argmax
    assert cold == {"a": 200}


# ---------------------------------------------------------------- the policy


def stored(tokens: list[int]) -> wire.BlockStored:
    return wire.BlockStored(hash_blocks(tokens, BS), None, tokens, BS)


@pytest.mark.parametrize(
    ("blocks", "num_tokens", "expected"), [(0, 10, 0), (2, 10, 8), (2, 8, 7), (3, 1, 0), (1, 0, 0)]
)
def test_expected_hit_is_capped_below_prompt_length(blocks, num_tokens, expected):
    assert expected_hit_tokens(blocks, BS, num_tokens) == expected


def test_policy_prefers_prefix_holder_and_reports_expected_hit():
    index = KvIndex(BS)
    prompt = list(range(16))  # exactly four blocks: the hit is capped at 15 tokens
    index.apply(wire.KvEventBatch("b", 1, 0.0, [stored(prompt[:8])]))
    index.apply(wire.KvEventBatch("c", 1, 0.0, [stored(prompt)]))
    decision = KvPolicy(index, seed=0).decide(prompt, W)
    assert (decision.worker, decision.overlap_blocks, decision.num_blocks) == ("c", 4, 4)
    assert decision.expected_hit_tokens == 15
    assert decision.scores["c"] > decision.scores["b"] > decision.scores["a"]
    with pytest.raises(ValueError):
        KvPolicy(index).decide(prompt, [])


def test_inflight_prefill_spreads_a_burst_until_load_catches_up():
    index = KvIndex(BS)
    inflight = InflightPrefill(ttl=1.0)
    policy = KvPolicy(index, {"prefix_overlap": 1.0, "inflight_prefill": 1.0}, seed=3, inflight=inflight)
    picks = [policy.decide(list(range(i * 100, i * 100 + 40)), W, now=0.0).worker for i in range(3)]
    assert sorted(picks) == W  # each uncached 40-token prompt goes to a worker with less in flight
    assert inflight.pending(0.5) == {w: 40 for w in W}
    inflight.observe_load("a", taken_at=0.1)
    assert inflight.pending(0.5) == {"b": 40, "c": 40}
    assert inflight.pending(1.5) == {}
    inflight.add("a", 10, now=2.0)
    inflight.forget("a")
    assert inflight.pending(2.0) == {}


def test_default_policy_spreads_a_burst_before_any_load_report():
    # Between two load reports (1 s apart) only the router's own decisions show new load: with the
    # default weights a burst of uncached prompts rotates over the workers instead of piling onto
    # whichever one the tie-break picks.
    policy = KvPolicy(KvIndex(BS), seed=5, inflight=InflightPrefill(ttl=1.0))
    picks = [policy.decide(list(range(i * 100, i * 100 + 40)), W, now=0.0).worker for i in range(12)]
    rounds = [picks[i : i + len(W)] for i in range(0, len(picks), len(W))]
    assert all(sorted(r) == W for r in rounds), picks


def test_inflight_totals_match_the_entries_they_sum():
    # The running totals must equal a plain sum over unexpired entries under any mix of operations.
    rng = random.Random(7)
    inflight = InflightPrefill(ttl=1.0)
    model: dict[str, list[tuple[float, int]]] = {w: [] for w in W}
    now = 0.0
    for _ in range(2000):
        now += rng.uniform(0, 0.05)
        w = rng.choice(W)
        op = rng.random()
        if op < 0.6:
            tokens = rng.randrange(0, 500)
            inflight.add(w, tokens, now)
            if tokens > 0:
                model[w].append((now, tokens))
        elif op < 0.8:
            taken_at = now - rng.uniform(0, 0.5)
            inflight.observe_load(w, taken_at)
            model[w] = [e for e in model[w] if e[0] >= taken_at]
        elif op < 0.82:
            inflight.forget(w)
            model[w] = []
        model = {k: [e for e in v if e[0] >= now - 1.0] for k, v in model.items()}
        expected = {k: sum(t for _, t in v) for k, v in model.items() if v}
        assert inflight.pending(now) == expected
