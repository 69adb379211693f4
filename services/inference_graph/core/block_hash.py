"""The chained block hash: the contract shared by the router and the workers.

A prompt is cut into blocks of ``block_size`` tokens; only *full* blocks are
hashed (a partial tail block can never be a prefix-cache hit). Each block's hash
covers its parent's hash and its own tokens, so one hash identifies the whole
prefix up to that block, as in vLLM's ``kv_cache_utils.hash_block_tokens``::

    hash_0 = H(ROOT_PARENT, tokens[0:bs])
    hash_i = H(hash_{i-1}, tokens[i*bs:(i+1)*bs])

Encoding (fixed; changing it is a wire change - see the golden vectors in
``tests/core/test_block_hash.py``)::

    H(parent, tokens[, extra_keys]) = xxh3_64(
        parent as u64 little-endian
        || each token id as u32 little-endian
        [|| msgpack(list(extra_keys)) || len(that msgpack) as u32 little-endian]
    )   with xxh3 seed 0

``extra_keys`` carry what makes equal tokens differ in KV (a LoRA adapter name,
a cache salt); requests without them hash with no suffix at all.

Why xxh3-64 and not a cryptographic hash: the router hashes every request
(~1k tokens) on its hot path and ingests hundreds of thousands of block events a
second, and the values never cross a trust boundary. Measured on this machine
class (2 cores, Python 3.11, xxhash 4.1) for 1,024 tokens in 32-token blocks:
xxh3_64 ~11 us per request (about half of it converting the list to an array;
pass an ``array('I')``: ~6 us), ``hashlib.blake2b(digest_size=8)`` ~30 us.
Seeds are fixed (``ROOT_PARENT``, xxh3 seed 0), never per process: every
process computes the same values (vLLM's xxhash modes need PYTHONHASHSEED for
that).

Pure: no I/O, no state.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence

import msgspec
import xxhash

__all__ = ["ROOT_PARENT", "hash_block", "hash_blocks"]

# The parent of a sequence's first block: a fixed odd constant (the 64-bit
# golden ratio), so the first block does not hash like a block whose parent is 0.
ROOT_PARENT = 0x9E3779B97F4A7C15

_MASK64 = (1 << 64) - 1
_xxh3 = xxhash.xxh3_64_intdigest
_pack_parent = struct.Struct("<Q").pack
_pack_len = struct.Struct("<I").pack
_LITTLE = sys.byteorder == "little"

if array("I").itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte 'I'
    raise ImportError("block_hash needs a 4-byte array('I')")


def _token_bytes(token_ids: Sequence[int]) -> bytes:
    """The tokens as packed little-endian u32 (OverflowError for ids outside 0..2**32-1)."""
    arr = token_ids if isinstance(token_ids, array) and token_ids.typecode == "I" else array("I", token_ids)
    if not _LITTLE:  # pragma: no cover
        arr = array("I", arr)
        arr.byteswap()
    return arr.tobytes()


def _suffix(extra_keys: Sequence[int | str | bytes] | None) -> bytes:
    if not extra_keys:
        return b""
    packed = msgspec.msgpack.encode(list(extra_keys))
    return packed + _pack_len(len(packed))


def hash_block(
    parent: int | None, tokens: Sequence[int], extra_keys: Sequence[int | str | bytes] | None = None
) -> int:
    """The hash of one block whose parent block hashed to ``parent`` (None: the first block)."""
    head = _pack_parent(ROOT_PARENT if parent is None else parent & _MASK64)
    return _xxh3(head + _token_bytes(tokens) + _suffix(extra_keys))


def hash_blocks(
    token_ids: Sequence[int],
    block_size: int,
    parent: int | None = None,
    extra_keys: Sequence[int | str | bytes] | None = None,
) -> list[int]:
    """Hashes (unsigned 64-bit) of every full block of ``token_ids``, chained from ``parent``.

    ``hash_blocks(a + b, bs) == hash_blocks(a, bs) + hash_blocks(b, bs, parent=<last of a>)``
    when ``len(a)`` is a multiple of ``bs``. ``extra_keys`` apply to every block.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    data = _token_bytes(token_ids)
    suffix = _suffix(extra_keys)
    step = 4 * block_size
    end = (len(data) // step) * step
    h = ROOT_PARENT if parent is None else parent & _MASK64
    out: list[int] = []
    append = out.append
    for off in range(0, end, step):
        h = _xxh3(_pack_parent(h) + data[off : off + step] + suffix)
        append(h)
    return out
