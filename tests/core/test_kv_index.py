"""The router's KV index: unit cases and a stateful property test against simulated caches.

The property test drives several simulated engines' ``KvCache``s directly
(no scheduler, no time) with random requests sharing prefixes, frees,
evictions, resets, lost batches, worker death and router restarts, feeds their
events to one ``KvIndex`` and checks that the index is exactly the union of the
caches. Engine hashes are scrambled by a bijection before they reach the
index, as a real engine's own hash would differ from the router's: the index
must map them back through its per-worker engine -> router map.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from inference_graph import wire
from inference_graph.core.block_hash import hash_blocks
from inference_graph.core.kv_index import KvIndex, ResyncReason
from inference_graph.engines.mocker.kv_cache import KvCache
from inference_graph.engines.mocker.scheduler import Sequence

BS = 4
MASK = (1 << 64) - 1
ODD = 0x9E3779B97F4A7C15  # multiplication by an odd constant is a bijection mod 2**64


def engine(h: int) -> int:
    """A stand-in for an engine's own hash function."""
    return (h * ODD) & MASK


def stored(tokens: list[int], parent_tokens: list[int] | None = None) -> wire.BlockStored:
    parent = hash_blocks(parent_tokens, BS)[-1] if parent_tokens else None
    router = hash_blocks(tokens, BS, parent)
    return wire.BlockStored(
        block_hashes=[engine(h) for h in router],
        parent_block_hash=None if parent is None else engine(parent),
        token_ids=tokens,
        block_size=BS,
    )


def batch(worker: str, seq: int, *events: wire.KvEvent) -> wire.KvEventBatch:
    return wire.KvEventBatch(worker, seq, 0.0, list(events))


A = list(range(100, 112))  # three blocks
B = list(range(200, 208))  # two blocks


# ---------------------------------------------------------------- unit cases


def test_stored_blocks_are_keyed_by_router_hash_and_chained_from_parent():
    index = KvIndex(BS)
    assert index.apply(batch("w1", 1, stored(A[:8]))) is None
    assert index.apply(batch("w1", 2, stored(A[8:], parent_tokens=A[:8]))) is None
    assert index.router_hashes("w1") == set(hash_blocks(A, BS))
    assert index.overlap(hash_blocks(A, BS)) == {"w1": 3}
    assert len(index) == 3 and index.stats().per_worker == {"w1": 3}


def test_overlap_is_a_prefix_match_per_worker():
    index = KvIndex(BS)
    index.apply(batch("w1", 1, stored(A)))
    index.apply(batch("w2", 1, stored(A[:4])))
    index.apply(batch("w3", 1, stored(B)))
    request = hash_blocks([*A, 1, 2, 3, 4], BS)
    assert index.overlap(request) == {"w1": 3, "w2": 1}
    assert index.overlap(hash_blocks(B, BS)) == {"w3": 2}
    assert index.overlap(hash_blocks([9, 9, 9, 9], BS)) == {}
    assert index.overlap([]) == {}
    # a worker that lost a middle block stops matching there, even if it holds later ones
    index.apply(batch("w1", 2, wire.BlockRemoved([engine(hash_blocks(A, BS)[1])])))
    assert index.overlap(request) == {"w1": 1, "w2": 1}


@pytest.mark.parametrize(
    ("held", "query", "expected"),
    [
        ({"w1": [10, 11], "w2": [10], "w3": [11]}, [10, 11], {"w1": 2, "w2": 1}),
        ({"w1": [10], "w2": [10], "w3": [11], "w4": [11]}, [10, 11, 12], {"w1": 1, "w2": 1}),
        ({"w1": [10, 11, 12], "w2": [10, 11], "w3": [10, 12]}, [10, 11, 12], {"w1": 3, "w2": 2, "w3": 1}),
        ({"w1": [11, 12]}, [10, 11, 12], {}),
        ({"w1": [10, 11], "w2": [10, 11]}, [10, 11, 12], {"w1": 2, "w2": 2}),
    ],
)
def test_overlap_table(held, query, expected):
    """Lone holders (kept as a str) and shared ones (a set) mixed along one request."""
    index = KvIndex(BS)
    for w, hashes in held.items():
        index.load_snapshot(w, [(engine(h), h) for h in hashes], seq=0)
    assert index.overlap(query) == expected


def test_removal_and_clear_keep_other_workers():
    index = KvIndex(BS)
    index.apply(batch("w1", 1, stored(A)))
    index.apply(batch("w2", 1, stored(A)))
    first = hash_blocks(A, BS)[0]
    index.apply(batch("w1", 2, wire.BlockRemoved([engine(first)])))
    assert index.holders(first) == {"w2"}
    index.apply(batch("w2", 2, wire.AllBlocksCleared()))
    assert index.holders(first) == frozenset()
    assert index.router_hashes("w1") == set(hash_blocks(A, BS)[1:])
    assert len(index) == 2


def test_unknown_removal_is_counted_not_fatal():
    index = KvIndex(BS)
    assert index.apply(batch("w1", 1, wire.BlockRemoved([123]))) is None
    assert index.stats().unknown_removals == 1


def test_gap_marks_resync_and_drops_batches_until_snapshot():
    index = KvIndex(BS)
    index.apply(batch("w1", 1, stored(A[:4])))
    resync = index.apply(batch("w1", 3, stored(B)))
    assert resync is not None and resync.reason is ResyncReason.GAP
    assert (resync.worker, resync.expected_seq, resync.got_seq) == ("w1", 2, 3)
    assert index.needs_resync("w1")
    pending = index.apply(batch("w1", 2, stored(B)))
    assert pending is not None and pending.reason is ResyncReason.PENDING
    assert index.router_hashes("w1") == set(hash_blocks(A[:4], BS))  # stale entries kept meanwhile
    snap = {engine(h): h for h in hash_blocks(B, BS)}
    index.load_snapshot("w1", snap, seq=3)
    assert not index.needs_resync("w1")
    assert index.router_hashes("w1") == set(hash_blocks(B, BS))
    assert index.apply(batch("w1", 4, wire.AllBlocksCleared())) is None
    assert len(index) == 0


def test_first_batch_after_late_start_is_a_gap_and_duplicates_are_ignored():
    index = KvIndex(BS)
    late = index.apply(batch("w1", 7, stored(A)))
    assert late is not None and late.reason is ResyncReason.GAP and late.expected_seq == 1
    index.load_snapshot("w1", [], seq=7)
    assert index.apply(batch("w1", 8, stored(A))) is None
    assert index.apply(batch("w1", 8, wire.AllBlocksCleared())) is None  # redelivery: ignored
    assert index.router_hashes("w1") == set(hash_blocks(A, BS))
    assert index.stats().duplicates == 1


def test_unknown_parent_and_malformed_events_ask_for_resync():
    index = KvIndex(BS)
    orphan = index.apply(batch("w1", 1, stored(A[8:], parent_tokens=A[:8])))
    assert orphan is not None and orphan.reason is ResyncReason.UNKNOWN_PARENT
    bad = wire.BlockStored(block_hashes=[1, 2], parent_block_hash=None, token_ids=A[:4], block_size=BS)
    assert index.apply(batch("w2", 1, bad)).reason is ResyncReason.MALFORMED
    assert index.stats().needs_resync == {"w1", "w2"}


def test_foreign_block_size_is_ignored():
    index = KvIndex(BS)
    event = wire.BlockStored(block_hashes=[1], parent_block_hash=None, token_ids=A[:8], block_size=8)
    assert index.apply(batch("w1", 1, event)) is None
    assert len(index) == 0 and index.stats().foreign_block_size == 1


def test_two_engine_hashes_with_one_router_hash_are_counted():
    """E.g. a LoRA adapter the router does not see: the block stays until both copies go."""
    index = KvIndex(BS)
    plain = stored(A[:4])
    lora = wire.BlockStored([777], None, A[:4], BS)
    index.apply(batch("w1", 1, plain, lora))
    h = hash_blocks(A[:4], BS)[0]
    index.apply(batch("w1", 2, wire.BlockRemoved([777])))
    assert index.holders(h) == {"w1"}
    index.apply(batch("w1", 3, wire.BlockRemoved(plain.block_hashes)))
    assert index.holders(h) == frozenset() and len(index) == 0


def test_remove_worker_drops_everything_at_once():
    index = KvIndex(BS)
    index.apply(batch("w1", 1, stored(A)))
    index.apply(batch("w2", 1, stored(A[:4])))
    index.remove_worker("w1")
    index.remove_worker("gone")  # unknown: no-op
    assert index.workers() == ["w2"]
    assert len(index) == 1 and index.overlap(hash_blocks(A, BS)) == {"w2": 1}
    assert index.apply(batch("w1", 2, stored(B))) is None  # late batch of the dead worker: ignored
    assert index.workers() == ["w2"] and not index.needs_resync("w1")
    assert index.apply(batch("w1", 1, stored(B))) is None  # the same id started afresh
    assert index.router_hashes("w1") == set(hash_blocks(B, BS))


def test_snapshot_round_trip_rebuilds_an_equal_index():
    old = KvIndex(BS)
    old.apply(batch("w1", 1, stored(A)))
    old.apply(batch("w2", 1, stored(B)))
    old.apply(batch("w2", 2, stored(A[:8])))
    new = KvIndex(BS)
    for w in old.workers():
        snap = old.snapshot_of(w)
        new.load_snapshot(w, snap.blocks, snap.seq)
    for w in old.workers():
        assert new.snapshot_of(w) == old.snapshot_of(w)
    assert new.apply(batch("w2", 3, wire.BlockRemoved([engine(hash_blocks(B, BS)[0])]))) is None
    assert new.router_hashes("w2") == set(hash_blocks(A[:8], BS)) | {hash_blocks(B, BS)[1]}


# ---------------------------------------------------------------- property test

PREFIXES = [[], list(range(100, 108)), list(range(200, 212)), [100, 101, 102, 103, 7, 7, 7, 7]]


class Worker:
    """One simulated engine's cache, its live sequences and its batch numbering."""

    def __init__(self, name: str, num_blocks: int):
        self.name = name
        self.kv = KvCache(num_blocks, BS)
        self.live: list[Sequence] = []
        self.seq = 0
        self.n = 0

    def publish(self) -> wire.KvEventBatch | None:
        events = self.kv.take_events()
        if not events:
            return None
        self.seq += 1
        return wire.KvEventBatch(self.name, self.seq, 0.0, [scramble(e) for e in events])

    def snapshot(self) -> dict[int, int]:
        return {engine(h): h for h in self.kv.cached_hashes()}


def scramble(event: wire.KvEvent) -> wire.KvEvent:
    if isinstance(event, wire.BlockStored):
        parent = event.parent_block_hash
        return wire.BlockStored(
            [engine(h) for h in event.block_hashes],
            None if parent is None else engine(parent),
            event.token_ids,
            event.block_size,
        )
    if isinstance(event, wire.BlockRemoved):
        return wire.BlockRemoved([engine(h) for h in event.block_hashes])
    return event


class IndexMachine(RuleBasedStateMachine):
    @initialize(num_workers=st.integers(1, 3), num_blocks=st.integers(4, 10))
    def setup(self, num_workers, num_blocks):
        self.num_blocks = num_blocks
        self.index = KvIndex(BS)
        self.workers = [Worker(f"w{i}", num_blocks) for i in range(num_workers)]
        self.born = num_workers
        self.lost = False

    def deliver(self, w: Worker, drop: bool = False) -> None:
        b = w.publish()
        if b is None:
            return
        if drop:  # lost on the event plane: the next batch reveals the gap
            self.lost = True
            return
        if self.index.apply(b) is not None:  # the I/O layer's resync: a snapshot from the worker
            self.index.load_snapshot(w.name, w.snapshot(), w.seq)

    @rule(
        which=st.integers(0, 7),
        prefix=st.sampled_from(PREFIXES),
        tail=st.lists(st.integers(4, 60), max_size=12),
        drop=st.booleans(),
        keep=st.booleans(),
    )
    def request(self, which, prefix, tail, drop, keep):
        w = self.workers[which % len(self.workers)]
        prompt = (prefix + tail)[: self.num_blocks * BS - 1] or [5]
        w.n += 1
        s = Sequence(f"{w.name}-r{w.n}", prompt, BS, key=0, max_tokens=1)
        hits = w.kv.lookup(s, len(prompt) - 1)
        if w.kv.allocate(s, len(prompt), hits):
            w.kv.cache_full_blocks(s, len(prompt))
            if keep:
                w.live.append(s)
            else:  # finished at once: its blocks stay cached and free, first to be evicted
                w.kv.free(s)
        self.deliver(w, drop=drop and not self.lost and which % 3 == 0)

    @precondition(lambda self: any(w.live for w in self.workers))
    @rule(which=st.integers(0, 7))
    def finish(self, which):
        w = [w for w in self.workers if w.live][which % sum(1 for w in self.workers if w.live)]
        w.kv.free(w.live.pop(which % len(w.live)))
        self.deliver(w)

    @rule(which=st.integers(0, 15))
    def reset(self, which):
        if which >= len(self.workers):
            return  # rarer than requests, so caches fill up and evict
        w = self.workers[which]
        for s in w.live:
            w.kv.free(s)
        w.live = []
        assert w.kv.reset()
        self.deliver(w)

    @rule(which=st.integers(0, 15))
    def worker_dies(self, which):
        if which >= len(self.workers):
            return
        dead = self.workers.pop(which)
        self.index.remove_worker(dead.name)
        self.workers.append(Worker(f"w{self.born}", self.num_blocks))
        self.born += 1

    @rule()
    def router_restarts(self):
        """A fresh router: every worker answers its snapshot request with its cache and seq."""
        self.index = KvIndex(BS)
        for w in self.workers:
            self.index.load_snapshot(w.name, w.snapshot(), w.seq)

    @rule()
    def heartbeat(self):
        """Every worker publishes a (possibly empty) batch, so a lost one is always detected."""
        for w in self.workers:
            w.seq += 1
            if self.index.apply(wire.KvEventBatch(w.name, w.seq, 0.0, [])) is not None:
                self.index.load_snapshot(w.name, w.snapshot(), w.seq)
        self.lost = False

    @invariant()
    def index_is_union_of_caches(self):
        if self.lost:
            return  # stale until the gap is seen (next batch or heartbeat)
        union: dict[int, set[str]] = {}
        for w in self.workers:
            assert self.index.router_hashes(w.name) == w.kv.cached_hashes()
            for h in w.kv.cached_hashes():
                union.setdefault(h, set()).add(w.name)
        assert len(self.index) == len(union)
        for h, names in union.items():
            assert self.index.holders(h) == names
        assert set(self.index.workers()) <= {w.name for w in self.workers}
        for prefix in PREFIXES[1:]:
            request = hash_blocks([*prefix, 1, 2, 3, 4, 5], BS)
            expected = {}
            for w in self.workers:
                n = 0
                while n < len(request) and request[n] in w.kv.cached_hashes():
                    n += 1
                if n:
                    expected[w.name] = n
            assert self.index.overlap(request) == expected


IndexMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_index_equals_union_of_simulated_caches = IndexMachine.TestCase
