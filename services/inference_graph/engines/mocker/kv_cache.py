"""The simulated KV cache: a block pool with vLLM's prefix cache and eviction order.

Blocks are bookkeeping only (no tensors). A block is

- *referenced*: held by one or more running sequences (``ref > 0``), cached
  (has a hash) or not (a partial block, or a full block whose hash another
  block already holds);
- *cached and free*: ``ref == 0`` with a hash; kept for prefix hits and
  evicted least-recently-freed first;
- *empty*: neither; counted, not stored.

Eviction order follows vLLM 0.32's ``BlockPool``: its free queue holds every
``ref == 0`` block; blocks freed without a hash go to the front (reused first),
cached blocks to the back, a sequence's blocks tail-first; allocation pops the
front. So empty blocks are always used before any cached block is evicted, and
cached blocks go least-recently-freed first (``_lru`` here).

Events, taken with ``take_events()`` once per engine step: ``BlockStored`` when
full blocks enter the cache (one event per run of consecutive blocks of one
sequence, with the parent hash and the blocks' tokens), ``BlockRemoved`` when a
cached block is evicted, ``AllBlocksCleared`` on ``reset()``. Replaying them
into an empty set reproduces ``cached_hashes()`` exactly.

Differences from vLLM, on purpose:
- a block whose hash is already cached (two identical prompts prefilled in the
  same step) stays uncached instead of being a second copy under the same hash,
  so one hash is one block and the event stream stays a set;
- there is no null block: usage is ``referenced / num_blocks``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ... import wire

if TYPE_CHECKING:
    from array import array


class Block:
    __slots__ = ("hash", "ref")

    def __init__(self) -> None:
        self.hash: int | None = None
        self.ref = 0

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Block(hash={self.hash}, ref={self.ref})"


class BlockOwner(Protocol):
    """What the cache needs from a sequence (``scheduler.Sequence``)."""

    tokens: array
    blocks: list[Block]
    block_hashes: list[int]
    num_cached_blocks: int

    def ensure_hashes(self, num_blocks: int) -> None: ...


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KvCache:
    """Block pool + prefix cache of one simulated engine."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._empty = num_blocks  # blocks with ref 0 and no hash
        self._lru: OrderedDict[Block, None] = OrderedDict()  # cached, ref 0; front = evicted first
        self._cached: dict[int, Block] = {}  # hash -> block (referenced or in _lru)
        self._events: list[wire.KvEvent] = []
        self._removed: list[int] = []  # evictions not yet folded into a BlockRemoved event

    # ------------------------------------------------------------ queries

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: empty ones plus evictable cached ones."""
        return self._empty + len(self._lru)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by running sequences (vLLM's kv_cache_usage)."""
        return self.num_used / self.num_blocks

    def cached_hashes(self) -> set[int]:
        return set(self._cached)

    def lookup(self, seq: BlockOwner, max_tokens: int) -> list[Block]:
        """The longest run of cached blocks that prefixes ``seq``, within ``max_tokens`` tokens."""
        if not self.enable_caching:
            return []
        n = max_tokens // self.block_size
        seq.ensure_hashes(n)
        hits: list[Block] = []
        cached = self._cached
        for h in seq.block_hashes[:n]:
            block = cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    # ------------------------------------------------------------ changes

    def allocate(
        self, seq: BlockOwner, num_tokens: int, hits: Sequence[Block] = (), must_fit_tokens: int = 0
    ) -> bool:
        """Give ``seq`` blocks for its first ``num_tokens`` tokens; False (and no change) if short.

        ``hits`` are prefix-cache blocks from ``lookup`` that become the
        sequence's first blocks (only for a sequence that holds none);
        ``must_fit_tokens``: fail unless blocks for that many tokens could be
        had now (vLLM's ``scheduler_reserve_full_isl`` admission check).
        """
        held = len(seq.blocks) + len(hits)
        need = max(cdiv(num_tokens, self.block_size) - held, 0)
        need_fit = max(cdiv(must_fit_tokens, self.block_size) - held, need)
        revived = sum(1 for b in hits if b.ref == 0)  # hits that leave the free pool
        if need_fit + revived > self.num_free:
            return False
        if hits:
            assert not seq.blocks, "prefix hits are only taken by a sequence that holds no blocks"
            for block in hits:
                if block.ref == 0:
                    del self._lru[block]
                block.ref += 1
            seq.blocks.extend(hits)
            seq.num_cached_blocks = len(hits)
        for _ in range(need):
            seq.blocks.append(self._take())
        self._flush_removed()
        return True

    def _take(self) -> Block:
        block = Block()
        block.ref = 1
        if self._empty:
            self._empty -= 1
            return block
        victim, _ = self._lru.popitem(last=False)
        assert victim.hash is not None, "the LRU holds only cached (hashed) blocks"
        del self._cached[victim.hash]
        self._removed.append(victim.hash)
        return block

    def _flush_removed(self) -> None:
        if self._removed:
            self._events.append(wire.BlockRemoved(block_hashes=self._removed))
            self._removed = []

    def cache_full_blocks(self, seq: BlockOwner, num_tokens: int) -> None:
        """Register ``seq``'s full blocks among its first ``num_tokens`` tokens in the prefix cache."""
        if not self.enable_caching:
            return
        bs = self.block_size
        n = min(num_tokens // bs, len(seq.blocks))
        start = seq.num_cached_blocks
        if n <= start:
            return
        seq.ensure_hashes(n)
        hashes = seq.block_hashes
        run_start = -1
        for i in range(start, n):
            h = hashes[i]
            block = seq.blocks[i]
            if h in self._cached:  # held by another block: keep this one uncached
                if run_start >= 0:
                    self._store_event(seq, run_start, i)
                    run_start = -1
                continue
            block.hash = h
            self._cached[h] = block
            if run_start < 0:
                run_start = i
        if run_start >= 0:
            self._store_event(seq, run_start, n)
        seq.num_cached_blocks = n

    def _store_event(self, seq: BlockOwner, start: int, end: int) -> None:
        bs = self.block_size
        self._events.append(
            wire.BlockStored(
                block_hashes=seq.block_hashes[start:end],
                parent_block_hash=seq.block_hashes[start - 1] if start else None,
                token_ids=seq.tokens[start * bs : end * bs].tolist(),
                block_size=bs,
            )
        )

    def free(self, seq: BlockOwner) -> None:
        """Drop ``seq``'s references (tail blocks first, so they are evicted first)."""
        for block in reversed(seq.blocks):
            block.ref -= 1
            if block.ref == 0:
                if block.hash is None:
                    self._empty += 1
                else:
                    self._lru[block] = None
        seq.blocks = []
        seq.num_cached_blocks = 0

    def reset(self) -> bool:
        """Forget every cached block (vLLM's reset_prefix_cache); False while any block is in use."""
        if self.num_used:
            return False
        self._cached.clear()
        self._lru.clear()
        self._empty = self.num_blocks
        self._flush_removed()
        self._events.append(wire.AllBlocksCleared())
        return True

    def take_events(self) -> list[wire.KvEvent]:
        self._flush_removed()
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ checks (tests)

    def check(self, owners: list[BlockOwner]) -> None:
        """Assert the pool's invariants given every sequence that holds blocks."""
        refs: dict[int, int] = {}
        blocks: dict[int, Block] = {}
        for seq in owners:
            for b in seq.blocks:
                refs[id(b)] = refs.get(id(b), 0) + 1
                blocks[id(b)] = b
        for key, count in refs.items():
            b = blocks[key]
            assert b.ref == count, f"{b} held {count} times"
            assert b not in self._lru, f"{b} is both referenced and free"
            assert b.hash is None or self._cached.get(b.hash) is b, f"referenced {b} was evicted"
        for b in self._lru:
            assert b.ref == 0 and b.hash is not None and self._cached.get(b.hash) is b
        for h, b in self._cached.items():
            assert b.hash == h
            assert b.ref > 0 or b in self._lru, f"cached {b} is neither held nor free"
        assert self._empty >= 0
        assert len(refs) + self.num_free == self.num_blocks, "blocks leaked or double-counted"
