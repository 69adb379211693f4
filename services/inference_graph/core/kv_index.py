"""The router's global KV index: which workers hold which prefix blocks.

Keys are *router* block hashes (``core.block_hash``: the chained hash of token
ids shared with every worker), so prefixes match across engines whatever their
own hash function. Each worker also keeps a map engine hash -> router hash,
because ``BlockRemoved`` and the parents of ``BlockStored`` carry engine hashes
only.

Data layout (chosen for the two hot paths, ``overlap`` and ``apply``):

- ``_holders: dict[router_hash, worker | set[worker]]``: one int-keyed dict
  for the whole cluster; ``overlap`` walks the request's hashes and intersects
  sets. A block with one holder (most of them) maps to the worker id itself,
  not a one-element set: no allocation per block, and no container object for
  the garbage collector to traverse (with a million sets, gen-2 collections
  halved the ingestion rate);
- per worker ``_WorkerState.blocks: dict[engine_hash, router_hash]``;
- ``_WorkerState.dups: dict[router_hash, count]``, only for the rare case of
  two engine hashes of one worker with the same router hash (engine-side extra
  keys such as a LoRA name the router does not see); empty otherwise, so the
  common path pays nothing for it.

Consistency rules:

- Batches of one worker carry ``seq`` 1, 2, 3... (``runtime.event_plane``). A
  batch with ``seq <= last`` is a duplicate (redelivery) and is ignored; a gap
  (``seq > last + 1``, including a first batch with ``seq > 1`` at a router that
  started late) marks the worker *needing resync*: its batches are dropped
  until ``load_snapshot`` installs its state and the ``seq`` it covers.
- A ``BlockStored`` whose parent the worker is not known to hold is a gap too
  (events were lost), and so is a malformed one (token count not matching its
  hashes): resync; the rest of that batch is not applied.
- While a worker waits for resync its old entries stay: a slightly stale
  answer beats routing as if it held nothing; the snapshot replaces them.
- ``remove_worker`` (lease gone) drops everything of that worker at once;
  batches still in flight from it are ignored, unless one has ``seq`` 1 (the
  same id started afresh) or a snapshot is loaded for it.
- Engine hashes are a set per worker: storing one twice is a no-op, the first
  removal removes it (vLLM may cache two copies under one hash; the index then
  forgets the block when the first copy goes - an underestimate, never a
  phantom).

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .. import wire
from .block_hash import ROOT_PARENT, hash_blocks

__all__ = ["IndexStats", "KvIndex", "KvSnapshot", "ResyncNeeded", "ResyncReason"]


class ResyncReason(enum.Enum):
    GAP = "gap"  # a batch's seq skipped ahead (lost, reordered, or a late-started router)
    UNKNOWN_PARENT = "unknown_parent"  # BlockStored chained to a block the index never saw
    MALFORMED = "malformed"  # BlockStored whose token count does not match its hashes
    PENDING = "pending"  # the worker already waits for a snapshot; the batch was dropped


@dataclass(frozen=True, slots=True)
class ResyncNeeded:
    """Returned by ``KvIndex.apply``: the I/O layer must fetch a snapshot (or replay) of ``worker``."""

    worker: str
    reason: ResyncReason
    expected_seq: int
    got_seq: int


@dataclass(frozen=True, slots=True)
class KvSnapshot:
    """One worker's blocks (engine hash -> router hash) as of batch ``seq``."""

    worker: str
    seq: int
    blocks: dict[int, int]


@dataclass(frozen=True, slots=True)
class IndexStats:
    num_blocks: int  # distinct router hashes held by any worker
    per_worker: dict[str, int]  # engine blocks per worker
    needs_resync: frozenset[str]
    batches: int
    duplicates: int
    dropped: int  # batches not applied (gap or pending resync)
    unknown_removals: int  # BlockRemoved of a hash the worker was not known to hold
    foreign_block_size: int  # BlockStored events ignored for a block size != the index's


@dataclass(slots=True)
class _WorkerState:
    last_seq: int = 0
    needs_resync: bool = False
    blocks: dict[int, int] = field(default_factory=dict)  # engine hash -> router hash
    dups: dict[int, int] = field(default_factory=dict)  # router hash -> engine hashes mapping to it (>= 2)


class KvIndex:
    """Router hash -> workers, fed by ``KvEventBatch``es, queried with ``overlap``."""

    def __init__(self, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._holders: dict[int, str | set[str]] = {}  # a lone holder is kept as the str itself
        self._workers: dict[str, _WorkerState] = {}
        self._removed: set[str] = set()  # ids dropped by remove_worker: their late batches are ignored
        self._batches = self._duplicates = self._dropped = 0
        self._unknown_removals = self._foreign = 0

    # ------------------------------------------------------------ queries

    def overlap(self, request_hashes: list[int]) -> dict[str, int]:
        """Leading blocks of ``request_hashes`` each worker holds (workers with none are absent).

        Walks the request's blocks once, narrowing the candidate set, and stops
        at the first block no remaining candidate holds.
        """
        holders = self._holders
        result: dict[str, int] = {}
        cand: set[str] | None = None
        depth = 0
        for h in request_hashes:
            held = holders.get(h)
            if held is None:
                break
            if isinstance(held, str):  # one holder: the common case
                if cand is None:
                    cand = {held}
                elif held not in cand:
                    break
                elif len(cand) > 1:
                    for w in cand:
                        if w != held:
                            result[w] = depth
                    cand = {held}
            elif cand is None:
                cand = set(held)
            elif not cand <= held:
                kept = cand & held
                if not kept:
                    break
                for w in cand - kept:
                    result[w] = depth
                cand = kept
            depth += 1
        if cand:
            for w in cand:
                result[w] = depth
        return result

    def request_hashes(self, token_ids: Sequence[int]) -> list[int]:
        """The router hashes of a prompt's full blocks (the producer step of a decision)."""
        return hash_blocks(token_ids, self.block_size)

    def workers(self) -> list[str]:
        return list(self._workers)

    def holders(self, router_hash: int) -> frozenset[str]:
        held = self._holders.get(router_hash)
        if held is None:
            return frozenset()
        return frozenset((held,)) if isinstance(held, str) else frozenset(held)

    def router_hashes(self, worker: str) -> set[int]:
        """The router hashes ``worker`` holds (tests, debugging)."""
        state = self._workers.get(worker)
        return set(state.blocks.values()) if state else set()

    def needs_resync(self, worker: str) -> bool:
        state = self._workers.get(worker)
        return bool(state and state.needs_resync)

    def __len__(self) -> int:
        return len(self._holders)

    def stats(self) -> IndexStats:
        return IndexStats(
            num_blocks=len(self._holders),
            per_worker={w: len(s.blocks) for w, s in self._workers.items()},
            needs_resync=frozenset(w for w, s in self._workers.items() if s.needs_resync),
            batches=self._batches,
            duplicates=self._duplicates,
            dropped=self._dropped,
            unknown_removals=self._unknown_removals,
            foreign_block_size=self._foreign,
        )

    # ------------------------------------------------------------ events

    def apply(self, batch: wire.KvEventBatch) -> ResyncNeeded | None:
        """Apply one worker's batch in order; a returned ``ResyncNeeded`` asks for a snapshot."""
        worker = batch.instance_id
        state = self._workers.get(worker)
        self._batches += 1
        if state is None:
            if worker in self._removed:
                if batch.seq != 1:  # a late batch of a worker whose lease is gone
                    self._dropped += 1
                    return None
                self._removed.discard(worker)  # the same id started afresh
            state = self._workers[worker] = _WorkerState()
        expected = state.last_seq + 1
        if state.needs_resync:
            self._dropped += 1
            return ResyncNeeded(worker, ResyncReason.PENDING, expected, batch.seq)
        if batch.seq < expected:
            self._duplicates += 1
            return None
        if batch.seq > expected:
            self._dropped += 1
            state.needs_resync = True
            return ResyncNeeded(worker, ResyncReason.GAP, expected, batch.seq)
        for event in batch.events:
            if type(event) is wire.BlockStored:
                reason = self._store(worker, state, event)
                if reason is not None:
                    state.needs_resync = True
                    self._dropped += 1
                    return ResyncNeeded(worker, reason, expected, batch.seq)
            elif type(event) is wire.BlockRemoved:
                self._remove(worker, state, event.block_hashes)
            else:
                self._clear(worker, state)
        state.last_seq = batch.seq
        return None

    def _store(self, worker: str, state: _WorkerState, event: wire.BlockStored) -> ResyncReason | None:
        if event.block_size != self.block_size:
            self._foreign += 1
            return None
        blocks = state.blocks
        parent = event.parent_block_hash
        router_parent: int | None
        if parent is None:
            router_parent = ROOT_PARENT
        else:
            router_parent = blocks.get(parent)
            if router_parent is None:
                return ResyncReason.UNKNOWN_PARENT
        router = hash_blocks(event.token_ids, self.block_size, router_parent)
        if len(router) != len(event.block_hashes):
            return ResyncReason.MALFORMED
        self._add(worker, state, zip(event.block_hashes, router, strict=True))  # lengths checked
        return None

    def _add(self, worker: str, state: _WorkerState, pairs: Iterable[tuple[int, int]]) -> None:
        """Record (engine hash, router hash) pairs as held by ``worker``."""
        blocks, holders = state.blocks, self._holders
        for engine_hash, router_hash in pairs:
            if engine_hash in blocks:
                continue
            blocks[engine_hash] = router_hash
            held = holders.get(router_hash)
            if held is None:
                holders[router_hash] = worker  # one holder: the id itself, not a one-element set
            elif isinstance(held, str):
                if held == worker:
                    state.dups[router_hash] = state.dups.get(router_hash, 1) + 1
                else:
                    holders[router_hash] = {held, worker}
            elif worker in held:
                state.dups[router_hash] = state.dups.get(router_hash, 1) + 1
            else:
                held.add(worker)

    def _remove(self, worker: str, state: _WorkerState, engine_hashes: Iterable[int]) -> None:
        blocks = state.blocks
        holders = self._holders
        dups = state.dups
        for engine_hash in engine_hashes:
            router_hash = blocks.pop(engine_hash, None)
            if router_hash is None:
                self._unknown_removals += 1
                continue
            if dups and router_hash in dups:
                n = dups[router_hash] - 1
                if n < 2:
                    del dups[router_hash]
                else:
                    dups[router_hash] = n
                continue
            self._unhold(holders, router_hash, worker)

    def _clear(self, worker: str, state: _WorkerState) -> None:
        holders = self._holders
        for router_hash in set(state.blocks.values()):
            self._unhold(holders, router_hash, worker)
        state.blocks = {}
        state.dups = {}

    @staticmethod
    def _unhold(holders: dict[int, str | set[str]], router_hash: int, worker: str) -> None:
        held = holders[router_hash]
        if isinstance(held, str):
            del holders[router_hash]
        else:
            held.discard(worker)
            if len(held) == 1:
                holders[router_hash] = held.pop()

    # ------------------------------------------------------------ membership and resync

    def remove_worker(self, worker: str) -> None:
        """Drop every entry of ``worker`` (its lease is gone)."""
        state = self._workers.pop(worker, None)
        self._removed.add(worker)
        if state is not None:
            self._clear(worker, state)

    def snapshot_of(self, worker: str) -> KvSnapshot:
        state = self._workers.get(worker)
        if state is None:
            return KvSnapshot(worker, 0, {})
        return KvSnapshot(worker, state.last_seq, dict(state.blocks))

    def load_snapshot(
        self, worker: str, blocks: Mapping[int, int] | Iterable[tuple[int, int]], seq: int
    ) -> None:
        """Replace ``worker``'s entries with ``blocks`` (engine hash -> router hash) as of batch ``seq``.

        Clears the resync flag; the next batch accepted is ``seq + 1``.
        """
        state = self._workers.get(worker)
        self._removed.discard(worker)
        if state is None:
            state = self._workers[worker] = _WorkerState()
        else:
            self._clear(worker, state)
        self._add(worker, state, blocks.items() if isinstance(blocks, Mapping) else blocks)
        state.last_seq = seq
        state.needs_resync = False
