"""The router/worker block-hash contract: golden vectors and chaining properties.

The vLLM cross-check (router hashes recomputed from a real engine's
BlockStored events) lives in tests/engines/mocker/test_mocker_vs_vllm.py.
"""

from __future__ import annotations

import struct
from array import array

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from inference_graph.core.block_hash import ROOT_PARENT, hash_block, hash_blocks

# Changing any of these is a wire change: routers and workers of different
# versions would stop agreeing on prefixes.
GOLDEN = [
    ((list(range(8)), 4, None), [18137032734927452217, 2482645420378343813]),
    (([1, 2, 3, 4, 5, 6, 7, 8, 9], 4, 42), [9269685335438329315, 9983120537824440110]),
    ((list(range(100, 164)), 32, None), [17375669720285201760, 14128629930212806208]),
]


@pytest.mark.parametrize(("args", "expected"), GOLDEN)
def test_golden_vectors(args, expected):
    tokens, block_size, parent = args
    assert hash_blocks(tokens, block_size, parent) == expected


def test_golden_single_blocks():
    assert hash_block(None, [0, 1, 2, 3]) == 18137032734927452217
    assert hash_block(None, [0, 1, 2, 3], extra_keys=["lora-a"]) == 14677888933327423609


def test_encoding_is_the_documented_one():
    tokens = [7, 70000, 3]
    raw = struct.pack("<Q", ROOT_PARENT) + struct.pack("<3I", *tokens)
    assert hash_block(None, tokens) == xxhash.xxh3_64_intdigest(raw)
    raw = struct.pack("<Q", 5) + struct.pack("<3I", *tokens)
    assert hash_block(5, tokens) == xxhash.xxh3_64_intdigest(raw)


def test_only_full_blocks_are_hashed():
    assert hash_blocks([1, 2, 3], 4) == []
    assert len(hash_blocks(list(range(11)), 4)) == 2
    assert hash_blocks([], 4) == []


def test_array_input_matches_list_input():
    tokens = list(range(500, 600))
    assert hash_blocks(array("I", tokens), 16) == hash_blocks(tokens, 16)


def test_extra_keys_separate_equal_tokens():
    tokens = list(range(64))
    plain = hash_blocks(tokens, 32)
    lora = hash_blocks(tokens, 32, extra_keys=["adapter-1"])
    assert plain != lora and len(set(plain) | set(lora)) == 4
    assert lora[1] == hash_block(lora[0], tokens[32:], ["adapter-1"])


def test_bad_input():
    with pytest.raises(ValueError):
        hash_blocks([1, 2], 0)
    with pytest.raises(OverflowError):
        hash_blocks([-1, 2], 2)


tokens_st = st.lists(st.integers(0, 2**32 - 1), max_size=200)


@given(tokens=tokens_st, block_size=st.integers(1, 40), cut=st.integers(0, 200))
def test_prefix_hashes_are_a_prefix(tokens, block_size, cut):
    whole = hash_blocks(tokens, block_size)
    part = hash_blocks(tokens[:cut], block_size)
    assert whole[: len(part)] == part
    assert all(0 <= h < 2**64 for h in whole)


@given(tokens=tokens_st, block_size=st.integers(1, 40), head_blocks=st.integers(0, 10))
def test_parent_chaining(tokens, block_size, head_blocks):
    cut = min(head_blocks * block_size, len(tokens) // block_size * block_size)
    head = hash_blocks(tokens[:cut], block_size)
    tail = hash_blocks(tokens[cut:], block_size, parent=head[-1] if head else None)
    assert head + tail == hash_blocks(tokens, block_size)


@given(tokens=tokens_st, block_size=st.integers(1, 40))
def test_blocks_chain_through_hash_block(tokens, block_size):
    expected, parent = [], None
    for i in range(len(tokens) // block_size):
        parent = hash_block(parent, tokens[i * block_size : (i + 1) * block_size])
        expected.append(parent)
    assert hash_blocks(tokens, block_size) == expected
