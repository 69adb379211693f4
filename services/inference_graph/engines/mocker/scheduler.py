"""Continuous batching like vLLM's v1 scheduler (FCFS policy), minus the model.

Synchronous and deterministic: ``schedule()`` plans one engine step,
``complete(step)`` applies it (samples one token for every sequence whose
context is fully computed). The engine sleeps the simulated step time between
the two. The rules follow ``vllm/v1/core/sched/scheduler.py`` (0.32):

- one token budget per step (``max_num_batched_tokens``); running sequences
  are scheduled first, in order, each with as many of its uncomputed tokens
  as the budget allows (chunked prefill: a long prompt takes several steps);
- a running sequence that cannot get the blocks it needs preempts the
  *last* running sequence (recompute: its blocks are freed, it goes back to
  the front of the waiting queue with nothing computed; its cached blocks
  usually make the re-prefill short) until the allocation fits or it preempted
  itself; a step with a preemption admits no waiting sequence;
- waiting sequences are admitted in order while fewer than ``max_num_seqs``
  run and budget is left, with their prefix-cache hit (capped at
  ``num_tokens - 1``, so at least one token is computed to get logits), only
  if blocks for the *whole* context could be had now (vLLM's
  ``scheduler_reserve_full_isl``) - otherwise admission stops (FCFS);
- full blocks enter the prefix cache when the step that computes them is
  scheduled (vLLM caches at ``allocate_slots`` time);
- stop checks in vLLM's order: EOS, stop token, then length
  (``max_tokens`` or ``max_model_len``);
- a sequence whose KV comes from a remote prefill (``remote_kv``) is admitted
  with blocks for its whole prompt and then *receives* for
  ``transfer_seconds(tokens)``: it computes nothing, is never a preemption
  victim, and an abort keeps its blocks until the transfer would have ended
  (vLLM defers freeing blocks a connector is still writing). Then its prompt
  but the last token counts as computed (vLLM's NixlConnector loads
  ``prompt - 1`` tokens; the decode engine computes the last one for logits).
"""

from __future__ import annotations

import enum
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...core.block_hash import hash_blocks
from .kv_cache import Block, KvCache
from .tokens import TokenSampler


class Status(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


class Sequence:
    """One request inside the simulated engine."""

    __slots__ = (
        "banned_early",
        "block_hashes",
        "block_size",
        "blocks",
        "eos_ids",
        "finish_reason",
        "ignore_eos",
        "key",
        "lend_kv",
        "logprobs",
        "max_tokens",
        "min_tokens",
        "num_cached_blocks",
        "num_cached_tokens",
        "num_computed",
        "num_preemptions",
        "num_prompt",
        "remote_kv",
        "request_id",
        "sink",
        "status",
        "stop_ids",
        "stop_token_id",
        "tokens",
        "transfer_until",
    )

    def __init__(
        self,
        request_id: str,
        prompt: list[int],
        block_size: int,
        *,
        key: int,
        max_tokens: int,
        min_tokens: int = 0,
        stop_token_ids: frozenset[int] = frozenset(),
        eos_ids: frozenset[int] = frozenset(),
        ignore_eos: bool = False,
        logprobs: int | None = None,
        sink: Any = None,
        remote_kv: bool = False,
        lend_kv: bool = False,
    ):
        self.request_id = request_id
        self.tokens = array("I", prompt)
        self.num_prompt = len(prompt)
        self.block_size = block_size
        self.key = key
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.stop_ids = stop_token_ids
        self.eos_ids = frozenset() if ignore_eos else eos_ids
        self.ignore_eos = ignore_eos
        # vLLM's min-tokens processor masks stop tokens and EOS until min_tokens.
        self.banned_early = stop_token_ids | self.eos_ids
        self.logprobs = logprobs
        self.sink = sink  # the engine's per-request output stream
        self.blocks: list[Block] = []
        self.block_hashes: list[int] = []
        self.num_cached_blocks = 0
        self.num_computed = 0
        self.num_cached_tokens = -1  # prefix hit at first admission; -1 until then
        self.num_preemptions = 0
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.stop_token_id: int | None = None
        self.remote_kv = remote_kv  # the prompt's KV arrives from a prefill engine
        self.lend_kv = lend_kv  # a prefill for a remote decode: blocks stay held until released
        self.transfer_until: float | None = None  # clock time the KV transfer ends, while receiving

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_outputs(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.num_prompt :].tolist()

    def ensure_hashes(self, num_blocks: int) -> None:
        """Extend ``block_hashes`` to the first ``num_blocks`` full blocks."""
        have = len(self.block_hashes)
        if have >= num_blocks:
            return
        bs = self.block_size
        parent = self.block_hashes[-1] if have else None
        self.block_hashes.extend(hash_blocks(self.tokens[have * bs : num_blocks * bs], bs, parent))

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"Sequence({self.request_id!r}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed}, blocks={len(self.blocks)})"
        )


def _transfer_end(seq: Sequence) -> float:
    """When the KV transfer of a sequence in ``receiving`` or ``releasing`` ends (clock time)."""
    assert seq.transfer_until is not None, "a receiving or releasing sequence has a transfer end"
    return seq.transfer_until


@dataclass
class Step:
    """One planned engine step."""

    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, new tokens)
    prefill_tokens: int = 0  # tokens computed for sequences still prefilling (uncached)
    decode_batch: int = 0  # sequences computing their one newest token
    preempted: list[Sequence] = field(default_factory=list)
    kv_usage: float = 0.0  # after this step's allocations

    def __bool__(self) -> bool:
        return bool(self.scheduled)


@dataclass
class TokenEvent:
    """What ``complete`` produced for one sequence."""

    seq: Sequence
    token: int
    logprob: Any = None  # wire.TokenLogprob when requested
    finished: bool = False


class Scheduler:
    def __init__(
        self,
        kv: KvCache,
        sampler: TokenSampler,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        transfer_seconds: Callable[[int], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``transfer_seconds(tokens)``: how long receiving that much remote KV takes (clock seconds)."""
        self.kv = kv
        self.transfer_seconds = transfer_seconds or (lambda tokens: 0.0)
        self.clock = clock
        self.receiving: list[Sequence] = []  # admitted, KV transfer in progress (also in running)
        self.releasing: list[Sequence] = []  # aborted mid-transfer: blocks held until it ends
        self.sampler = sampler
        self.block_size = kv.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.releasing)

    def release(self, seq: Sequence) -> None:
        """A finished prefill's blocks are no longer needed by its decode side (vLLM frees them
        when the decode engine's NIXL read completes)."""
        if seq.lend_kv:
            seq.lend_kv = False
            self.kv.free(seq)

    def next_transfer_end(self) -> float | None:
        """When the earliest KV transfer in progress ends (clock time), if any."""
        ends = [_transfer_end(s) for s in (*self.receiving, *self.releasing)]
        return min(ends) if ends else None

    def _finish_transfers(self) -> None:
        now = self.clock()
        for seq in [s for s in self.releasing if _transfer_end(s) <= now]:
            self.releasing.remove(seq)
            seq.transfer_until = None
            self.kv.free(seq)
        for seq in [s for s in self.receiving if _transfer_end(s) <= now]:
            self.receiving.remove(seq)
            seq.transfer_until = None
            seq.num_computed = seq.num_prompt - 1
            self.kv.cache_full_blocks(seq, seq.num_computed)

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> bool:
        """Remove ``seq`` wherever it is and free its blocks; False if it had finished."""
        if seq.status == Status.FINISHED:
            return False
        if seq.status == Status.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        if seq.transfer_until is not None:  # the connector still writes these blocks
            self.receiving.remove(seq)
            self.releasing.append(seq)
        else:
            self.kv.free(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = "abort"
        return True

    # ------------------------------------------------------------ planning

    def schedule(self) -> Step:
        if self.receiving or self.releasing:
            self._finish_transfers()
        step = Step()
        budget = self._schedule_running(step, self.max_num_batched_tokens)
        if not step.preempted:
            self._schedule_waiting(step, budget)
        step.kv_usage = self.kv.usage
        return step

    def _plan(self, step: Step, seq: Sequence, n: int) -> None:
        step.scheduled.append((seq, n))
        if n == 1 and seq.num_outputs > 0 and seq.num_computed + 1 == seq.num_tokens:
            step.decode_batch += 1
        else:
            step.prefill_tokens += n
        self.kv.cache_full_blocks(seq, seq.num_computed + n)

    def _schedule_running(self, step: Step, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.transfer_until is not None:  # receiving its KV: nothing to compute yet
                i += 1
                continue
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self.kv.allocate(seq, seq.num_computed + n):
                victim = self._victim()
                if victim is None:  # only receiving sequences to take from: wait for them
                    return budget
                self.running.remove(victim)
                self._preempt(victim)
                step.preempted.append(victim)
                if victim is seq:
                    return budget
            self._plan(step, seq, n)
            budget -= n
            i += 1
        return budget

    def _victim(self) -> Sequence | None:
        """The last running sequence that is not receiving KV (those blocks are being written)."""
        for seq in reversed(self.running):
            if seq.transfer_until is None:
                return seq
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _schedule_waiting(self, step: Step, budget: int) -> None:
        kv = self.kv
        while budget > 0 and self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = kv.lookup(seq, seq.num_tokens - 1)
            computed = len(hits) * self.block_size
            n = min(seq.num_tokens - computed, budget)
            must_fit = min(seq.num_tokens, self.max_model_len)
            if seq.remote_kv:
                n = seq.num_prompt - computed  # blocks for the whole prompt, written by the transfer
            if not kv.allocate(seq, computed + n, hits, must_fit_tokens=must_fit):
                break
            self.waiting.popleft()
            self.running.append(seq)
            seq.status = Status.RUNNING
            seq.num_computed = computed
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = computed
            if seq.remote_kv:
                self._start_transfer(seq, computed)
                continue
            self._plan(step, seq, n)
            budget -= n

    def _start_transfer(self, seq: Sequence, computed: int) -> None:
        """Receive the uncached part of the prompt (all but its last token) from the prefill engine."""
        seq.remote_kv = False  # a preemption later recomputes locally, as vLLM does
        tokens = max(seq.num_prompt - 1 - computed, 0)
        seq.transfer_until = self.clock() + self.transfer_seconds(tokens)
        self.receiving.append(seq)

    # ------------------------------------------------------------ applying

    def complete(self, step: Step) -> list[TokenEvent]:
        """Apply a step: advance computed tokens, sample, stop, free finished sequences."""
        out: list[TokenEvent] = []
        sampler = self.sampler
        for seq, n in step.scheduled:
            if seq.status != Status.RUNNING:  # aborted or preempted meanwhile
                continue
            seq.num_computed += n
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk: no token yet
            n_out = seq.num_outputs
            early = n_out < seq.min_tokens
            token = sampler.next_token(
                seq.tokens,
                seq.key,
                not early and bool(seq.eos_ids),
                seq.banned_early if early else frozenset(),
            )
            logprob = None
            if seq.logprobs is not None:
                logprob = sampler.logprobs(seq.tokens, seq.key, token, seq.logprobs)
            seq.tokens.append(token)
            finished = self._check_stop(seq, token)
            if finished:
                self.running.remove(seq)
                if not seq.lend_kv:  # else held until release(): the decode side reads them
                    self.kv.free(seq)
                seq.status = Status.FINISHED
            out.append(TokenEvent(seq, token, logprob, finished))
        return out

    def _check_stop(self, seq: Sequence, token: int) -> bool:
        if token in seq.eos_ids:
            seq.finish_reason = "stop"
            return True
        if token in seq.stop_ids:
            seq.finish_reason = "stop"
            seq.stop_token_id = token
            return True
        if seq.num_tokens >= self.max_model_len or seq.num_outputs >= seq.max_tokens:
            seq.finish_reason = "length"
            return True
        return False
