"""Block accounting of the simulated KV cache: unit cases and a stateful property test.

The property test drives the synchronous scheduler (no event loop, no time)
with random workloads - prompts sharing prefixes, random max_tokens, random
aborts - and checks after every operation that no block is both free and
referenced, reference counts match the holders, capacity holds, evicted blocks
were unreferenced, and that replaying every emitted KV event into an empty set
reproduces the cache's block set.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.engines.mocker.kv_cache import KvCache
from inference_graph.engines.mocker.scheduler import Scheduler, Sequence, Status
from inference_graph.engines.mocker.tokens import TokenSampler, Vocab

BS = 4


def seq(request_id: str, prompt: list[int], max_tokens: int = 4, **kwargs) -> Sequence:
    return Sequence(request_id, prompt, BS, key=7, max_tokens=max_tokens, **kwargs)


def replay(index: set[int], events: list[wire.KvEvent]) -> None:
    """What a router's per-worker index does with the events."""
    for event in events:
        if isinstance(event, wire.BlockStored):
            assert not index & set(event.block_hashes), "a block stored twice without removal"
            assert len(event.token_ids) == BS * len(event.block_hashes)
            index.update(event.block_hashes)
        elif isinstance(event, wire.BlockRemoved):
            assert set(event.block_hashes) <= index, "removal of a block never stored"
            index.difference_update(event.block_hashes)
        else:
            index.clear()


# ---------------------------------------------------------------- unit cases


def test_stored_event_carries_chain_and_tokens():
    kv = KvCache(num_blocks=8, block_size=BS)
    s = seq("a", list(range(10, 20)))  # two full blocks and 2 tokens
    assert kv.allocate(s, 10)
    kv.cache_full_blocks(s, 10)
    [event] = kv.take_events()
    assert event == wire.BlockStored(
        block_hashes=hash_blocks(list(range(10, 18)), BS),
        parent_block_hash=None,
        token_ids=list(range(10, 18)),
        block_size=BS,
    )
    assert kv.usage == 3 / 8
    kv.free(s)
    assert kv.usage == 0.0 and kv.cached_hashes() == set(event.block_hashes)


def test_lookup_hits_shared_prefix_and_revives_free_blocks():
    kv = KvCache(num_blocks=8, block_size=BS)
    a = seq("a", list(range(12)))
    kv.allocate(a, 12)
    kv.cache_full_blocks(a, 12)
    kv.free(a)
    b = seq("b", [*range(8), 99, 98, 97, 96, 95])
    hits = kv.lookup(b, b.num_tokens - 1)
    assert len(hits) == 2
    assert kv.allocate(b, 13, hits)
    assert b.blocks[:2] == hits and all(blk.ref == 1 for blk in hits)
    kv.check([b])


def test_eviction_is_lru_tail_first_and_prefers_empty_blocks():
    kv = KvCache(num_blocks=4, block_size=BS)
    a = seq("a", list(range(8)))
    kv.allocate(a, 8)
    kv.cache_full_blocks(a, 8)
    kv.free(a)  # a's two blocks are cached and free; two blocks are empty
    kv.take_events()
    b = seq("b", list(range(100, 112)))
    assert kv.allocate(b, 12)  # 3 blocks: 2 empty, then evict a's *tail* block first
    [removed] = kv.take_events()
    assert removed == wire.BlockRemoved(block_hashes=[a.block_hashes[1]])
    assert kv.cached_hashes() == {a.block_hashes[0]}
    kv.check([b])


def test_allocation_fails_without_change():
    kv = KvCache(num_blocks=2, block_size=BS)
    a = seq("a", list(range(12)))
    assert not kv.allocate(a, 12)
    assert a.blocks == [] and kv.num_free == 2
    assert kv.allocate(a, 8) and not kv.allocate(a, 12)
    assert len(a.blocks) == 2


def test_duplicate_blocks_stay_uncached():
    kv = KvCache(num_blocks=8, block_size=BS)
    a, b = seq("a", list(range(8))), seq("b", list(range(8)))
    kv.allocate(a, 8)
    kv.allocate(b, 8)  # admitted before a's blocks were cached: no hit
    kv.cache_full_blocks(a, 8)
    kv.cache_full_blocks(b, 8)
    events = kv.take_events()
    assert len(events) == 1 and kv.cached_hashes() == set(a.block_hashes)
    kv.free(b)
    assert kv.num_free == 6  # b's copies went back empty, not into the cache
    kv.check([a])


def test_reset_only_when_idle():
    kv = KvCache(num_blocks=4, block_size=BS)
    a = seq("a", list(range(8)))
    kv.allocate(a, 8)
    kv.cache_full_blocks(a, 8)
    assert not kv.reset()
    kv.free(a)
    kv.take_events()
    assert kv.reset()
    assert kv.take_events() == [wire.AllBlocksCleared()]
    assert kv.cached_hashes() == set() and kv.num_free == 4


def test_caching_disabled_emits_nothing():
    kv = KvCache(num_blocks=4, block_size=BS, enable_caching=False)
    a = seq("a", list(range(8)))
    kv.allocate(a, 8)
    kv.cache_full_blocks(a, 8)
    assert kv.lookup(a, 8) == [] and kv.take_events() == []


# ---------------------------------------------------------------- property test

PREFIXES = [[], list(range(100, 108)), list(range(200, 212)), [100, 101, 102, 103, 7, 7, 7, 7]]


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(
        num_blocks=st.integers(6, 24),
        max_num_seqs=st.integers(1, 4),
        budget=st.integers(1, 24),
    )
    def setup(self, num_blocks, max_num_seqs, budget):
        self.kv = KvCache(num_blocks, BS)
        vocab = Vocab.plain(64, eos_token_id=2, special=(0, 1))
        self.sched = Scheduler(
            self.kv,
            TokenSampler(vocab),
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget,
            max_model_len=num_blocks * BS,
        )
        self.max_model_len = num_blocks * BS
        self.seqs: list[Sequence] = []
        self.index: set[int] = set()
        self.n = 0

    @rule(
        prefix=st.sampled_from(PREFIXES),
        tail=st.lists(st.integers(4, 60), max_size=14),
        max_tokens=st.integers(1, 12),
    )
    def add(self, prefix, tail, max_tokens):
        prompt = (prefix + tail)[: self.max_model_len - 1] or [5]
        self.n += 1
        s = Sequence(f"r{self.n}", prompt, BS, key=self.n % 3, max_tokens=max_tokens, eos_ids=frozenset({2}))
        self.seqs.append(s)
        self.sched.add(s)

    @precondition(lambda self: self.sched.has_work())
    @rule(count=st.integers(1, 4))
    def step(self, count):
        for _ in range(count):
            step = self.sched.schedule()
            used = sum(n for _, n in step.scheduled)
            assert used <= self.sched.max_num_batched_tokens
            assert len(self.sched.running) <= self.sched.max_num_seqs
            self.sched.complete(step)
            replay(self.index, self.kv.take_events())

    @precondition(lambda self: self.sched.has_work())
    @rule(pick=st.randoms(use_true_random=False))
    def abort(self, pick: random.Random):
        live = [s for s in self.seqs if s.status != Status.FINISHED]
        self.sched.abort(pick.choice(live))
        replay(self.index, self.kv.take_events())

    @precondition(lambda self: not self.sched.has_work())
    @rule()
    def reset(self):
        assert self.kv.reset()
        replay(self.index, self.kv.take_events())
        assert self.index == set()

    @invariant()
    def accounting_holds(self):
        holders = [s for s in self.seqs if s.blocks]
        assert all(s.status == Status.RUNNING for s in holders), "only running sequences hold blocks"
        self.kv.check(holders)
        assert 0 <= self.kv.num_used <= self.kv.num_blocks
        replay(self.index, self.kv.take_events())
        assert self.index == self.kv.cached_hashes()
        for s in self.seqs:
            if s.status == Status.FINISHED and s.finish_reason != "abort":
                assert (
                    s.num_outputs == s.max_tokens
                    or s.output_ids[-1] == 2
                    or s.num_tokens == self.max_model_len
                )

    def teardown(self):
        for _ in range(2000):  # everything left finishes: no livelock, no leak
            if not self.sched.has_work():
                break
            self.sched.complete(self.sched.schedule())
        assert not self.sched.has_work()
        assert self.kv.num_used == 0
        replay(self.index, self.kv.take_events())
        assert self.index == self.kv.cached_hashes()


SchedulerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_scheduler_block_accounting = SchedulerMachine.TestCase
