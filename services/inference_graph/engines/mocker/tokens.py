"""Simulated output tokens: deterministic, cheap, and decodable by the model's tokenizer.

The vocabulary facts come from a real model directory (``config.json``,
``generation_config.json``, ``tokenizer.json``), so the processor detokenizes
the mocker's tokens with the real tokenizer and stops at the real EOS id.

Determinism. The token at each position is a function of the whole context
(prompt + tokens generated so far) and a per-request key::

    h = xxh3_64(context as u32 little-endian, seed=key)

- greedy (temperature ~0): ``key`` = the engine seed only, so the same prompt
  gives the same continuation on every engine with that seed, whatever the
  request id; a context extended by its own first token (the decode half of a
  disaggregated request) continues exactly as the aggregated request would;
- ``sampling.seed`` set: ``key`` mixes the engine seed and that seed;
- otherwise: ``key`` mixes the engine seed and the request id (reproducible per
  id, different across ids).

Recomputing after a preemption therefore gives the same tokens.

EOS policy: the sampled distribution excludes special tokens (EOS, BOS, pad and
the tokenizer's special added tokens), so a request runs to ``max_tokens``
unless ``eos_probability`` > 0 (then, when ``ignore_eos`` is false and
``min_tokens`` are out, EOS is emitted with that probability per token), or a
sampled token is one of ``stop_token_ids``. Benchmarks want controllable output
lengths; a per-token EOS probability p gives geometric lengths (mean 1/p).
``min_tokens`` masks stop tokens and EOS like vLLM's min-tokens logits processor.
"""

from __future__ import annotations

import functools
import json
import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ... import wire

_xxh3 = xxhash.xxh3_64_intdigest
_MASK64 = (1 << 64) - 1
_GREEDY_EPS = 1e-5  # vLLM's _SAMPLING_EPS: temperatures below it are greedy


def _mix(a: int, b: int) -> int:
    """splitmix64-style mix of two 64-bit values."""
    z = (a ^ (b + 0x9E3779B97F4A7C15 + ((a << 6) & _MASK64) + (a >> 2))) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _ids(value: int | Iterable[int] | None) -> list[int]:
    """A config's token id field (``eos_token_id`` and the like): one id, a list of them, or none."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


@dataclass(frozen=True)
class Vocab:
    """What the mocker needs to know about a model's vocabulary."""

    vocab_size: int
    eos_token_id: int | None  # emitted when the simulated model "stops"
    eos_token_ids: frozenset[int]  # every id that ends a request (config + generation config)
    allowed: array  # ids the sampler draws from (no special tokens), array('I')

    @classmethod
    def plain(cls, vocab_size: int, eos_token_id: int | None = None, special: tuple[int, ...] = ()) -> Vocab:
        eos = frozenset(() if eos_token_id is None else (eos_token_id,))
        banned = set(special) | eos
        return cls(
            vocab_size, eos_token_id, eos, array("I", (i for i in range(vocab_size) if i not in banned))
        )


@functools.lru_cache(maxsize=16)
def load_vocab(model_path: str) -> Vocab:
    """Read the vocabulary facts of the model directory ``model_path`` (cached per path)."""
    root = Path(model_path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"mocker: no config.json in {model_path!r}; the simulated engine needs a local model "
            "directory (builtin://tiny-llama works) to take its vocabulary and EOS token from"
        )
    config = json.loads(config_file.read_text())
    text = config.get("text_config") or {}
    vocab_size = config.get("vocab_size") or text.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"mocker: {config_file} has no usable vocab_size ({vocab_size!r})")
    eos = _ids(config.get("eos_token_id", text.get("eos_token_id")))
    gen_file = root / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    all_eos = [i for i in eos + _ids(gen.get("eos_token_id")) if 0 <= i < vocab_size]
    special = set(all_eos)
    for key in ("bos_token_id", "pad_token_id"):
        special.update(_ids(config.get(key)))
    tok_file = root / "tokenizer.json"
    if tok_file.is_file():
        try:
            added = json.loads(tok_file.read_text()).get("added_tokens") or []
            special.update(int(t["id"]) for t in added if t.get("special"))
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable tokenizer only means special tokens may be sampled
    allowed = array("I", (i for i in range(vocab_size) if i not in special))
    if not allowed:
        raise ValueError(f"mocker: {model_path!r} has no non-special token to generate")
    return Vocab(vocab_size, all_eos[0] if all_eos else None, frozenset(all_eos), allowed)


def request_key(engine_seed: int, request_id: str, sampling: wire.SamplingOptions) -> int:
    """The per-request key of the token PRNG (see the module docstring)."""
    base = engine_seed & _MASK64
    if sampling.temperature < _GREEDY_EPS:
        return base
    if sampling.seed is not None:
        return _mix(base, (sampling.seed & _MASK64) ^ 0x5EED)
    return _mix(base, _xxh3(request_id.encode()))


class TokenSampler:
    """Draws the next token (and fake logprobs) for a context."""

    def __init__(self, vocab: Vocab, eos_probability: float = 0.0):
        if not 0.0 <= eos_probability <= 1.0:
            raise ValueError(f"eos_probability must be in [0, 1], got {eos_probability}")
        self.vocab = vocab
        self.eos_probability = eos_probability
        self._eos_threshold = int(eos_probability * (1 << 53))

    def next_token(self, context: array, key: int, may_stop: bool, banned: frozenset[int] | set[int]) -> int:
        """The token after ``context`` (array('I')).

        ``may_stop``: EOS may be emitted (not ignore_eos, min_tokens reached);
        ``banned``: ids that must not be drawn (stop tokens before min_tokens).
        """
        h = _xxh3(context, key)
        vocab = self.vocab
        if may_stop and self._eos_threshold and vocab.eos_token_id is not None:
            if (_mix(h, 0xE05) >> 11) < self._eos_threshold:
                return vocab.eos_token_id
        allowed = vocab.allowed
        token = allowed[h % len(allowed)]
        tries = 0
        while token in banned:
            tries += 1
            if tries > 8:  # pathological ban lists: take the first allowed id not banned
                return next((t for t in allowed if t not in banned), token)
            h = _mix(h, tries)
            token = allowed[h % len(allowed)]
        return token

    def logprobs(self, context: array, key: int, token: int, k: int) -> wire.TokenLogprob:
        """A plausible ``TokenLogprob``: the chosen token ranks first, then ``k - 1`` others.

        Values are decreasing log-probabilities whose probabilities sum to < 1.
        """
        h = _mix(_xxh3(context, key), 0x1095)
        p0 = 0.35 + 0.6 * ((h >> 11) / (1 << 53))  # chosen token: 0.35..0.95
        lp0 = math.log(p0)
        top: list[tuple[int, float]] = []
        if k > 0:
            top.append((token, lp0))
            allowed = self.vocab.allowed
            rest = 1.0 - p0
            seen = {token}
            i = 0
            while len(top) < k and i < 4 * k + 8:
                i += 1
                h = _mix(h, i)
                alt = allowed[h % len(allowed)]
                if alt in seen:
                    continue
                seen.add(alt)
                rest *= 0.5
                top.append((alt, math.log(max(rest, 1e-30))))
        return wire.TokenLogprob(token_id=token, logprob=lp0, top=top)
