"""``MockerEngine``: the simulated engine behind ``base.Engine``.

One asyncio task per engine runs the step loop: plan a step
(``Scheduler.schedule``), sleep the simulated step time (``timing``), apply it
(``Scheduler.complete``), hand each sequence's new token to its stream and
publish the step's KV events as one batch (as vLLM publishes after
``update_from_output``). With no work the task waits on an ``asyncio.Event``,
so idle engines cost no CPU and dozens fit in one process.

Outputs: each request has a small stream object (pending tokens + a waiter
future) instead of a queue; a consumer that keeps up gets one frame per step,
one that lags gets the tokens of several steps in one frame.

Requests are validated like vLLM's input processor and ``SamplingParams``
(same messages, HTTP 400), so the layers above see the same errors from both
engines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from ... import wire
from ...errors import ServingError, invalid_request, server_error, service_unavailable
from ..base import EngineInfo, EngineLoad
from ..kv_transfer import KvTransferError, SimulatedTransfer
from .kv_cache import KvCache
from .scheduler import Scheduler, Sequence, Status
from .timing import TimingModel, make_timing, step_ms
from .tokens import TokenSampler, Vocab, load_vocab, request_key

if TYPE_CHECKING:
    from ...core.spec import EngineSpec

log = logging.getLogger(__name__)

MAX_LOGPROBS = 20  # vLLM's default max_logprobs
MAX_PENDING_EVENT_BATCHES = 100_000  # like the ZMQ high-water mark of the vLLM subscriber
_MAX_CATCH_UP_S = 0.05
# Steps modelled as taking no time (the instant timing) run back to back without
# yielding, for at most this long: no simulated time passes between them, so no
# request could arrive or read a token in between; yielding after each would only
# add one event-loop turn and one socket write per step to what we measure.
_MAX_INSTANT_BURST_S = 0.002


class _Stream:
    """Tokens produced for one request and not yet taken by its consumer."""

    __slots__ = ("error", "logprobs", "tokens", "waiter")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.logprobs: list[wire.TokenLogprob] | None = None
        self.waiter: asyncio.Future | None = None
        self.error: BaseException | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MockerEngine:
    """A simulated vLLM-like engine: real scheduling and KV accounting, fake tokens and time."""

    def __init__(
        self,
        engine_spec: EngineSpec,
        model_path: str,
        served_model_name: str | None = None,
        *,
        eos_probability: float = 0.0,
        timing: TimingModel | None = None,
        kv_transfer: SimulatedTransfer | None = None,
    ):
        """``kv_transfer``: how this engine exchanges KV with others (disaggregation); None: it does not."""
        mocker = engine_spec.mocker
        self.spec = engine_spec
        self.model_path = model_path
        self.served_model_name = served_model_name
        self.block_size = engine_spec.block_size
        self.max_model_len = engine_spec.max_model_len
        self.speedup = mocker.speedup
        self.seed = mocker.seed
        self.eos_probability = eos_probability
        self.info = EngineInfo(
            block_size=engine_spec.block_size,
            num_kv_blocks=mocker.num_kv_blocks,
            max_model_len=engine_spec.max_model_len,
        )
        self._timing_override = timing
        self.kv_transfer = kv_transfer
        self.engine_id = f"mocker-{id(self):x}"
        self.timing: TimingModel | None = None
        self.vocab: Vocab | None = None
        self.kv: KvCache | None = None
        self.scheduler: Scheduler | None = None
        self._task: asyncio.Task | None = None
        self._wakeup = asyncio.Event()
        self._seqs: dict[str, Sequence] = {}
        self._lent: dict[str, Sequence] = {}  # finished prefills whose blocks a decode side may still read
        self._events: collections.deque[list[wire.KvEvent]] = collections.deque()
        self._events_signal = asyncio.Event()
        self.events_dropped = 0
        self._closed = False
        self.num_steps = 0
        # (prefill_tokens, decode_batch, kv_usage, modelled seconds, measured seconds) of recent steps
        self.step_log: collections.deque[tuple[int, int, float, float, float]] = collections.deque(maxlen=256)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is not None:
            return
        spec = self.spec
        if spec.mocker.num_kv_blocks * spec.block_size < spec.max_model_len:
            raise ValueError(
                f"engine.mocker.numKvBlocks: {spec.mocker.num_kv_blocks} blocks of {spec.block_size} tokens "
                f"cannot hold one sequence of engine.maxModelLen={spec.max_model_len} tokens"
            )
        self.vocab = load_vocab(self.model_path)
        self.timing = self._timing_override or make_timing(spec.mocker)
        self.kv = KvCache(spec.mocker.num_kv_blocks, spec.block_size, spec.enable_prefix_caching)
        loop = asyncio.get_running_loop()
        transfer = self.kv_transfer
        self.scheduler = Scheduler(
            self.kv,
            TokenSampler(self.vocab, self.eos_probability),
            max_num_seqs=spec.max_num_seqs,
            max_num_batched_tokens=spec.mocker.max_num_batched_tokens,
            max_model_len=spec.max_model_len,
            transfer_seconds=(lambda tokens: transfer.seconds(tokens) / self.speedup) if transfer else None,
            clock=loop.time,
        )
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"mocker-steps-{id(self):x}")
        log.debug(
            "mocker engine ready: %s, %d KV blocks of %d tokens, timing %s x%g",
            self.model_path,
            spec.mocker.num_kv_blocks,
            spec.block_size,
            self.timing.name,
            self.speedup,
        )

    async def shutdown(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._fail_all(service_unavailable("the engine shut down"))
        self._events_signal.set()  # ends kv_events() iterations

    # ------------------------------------------------------------ interface

    def load(self) -> EngineLoad:
        sched = self.scheduler
        if sched is None:
            return EngineLoad(running=0, waiting=0, kv_usage=0.0)
        return EngineLoad(running=len(sched.running), waiting=len(sched.waiting), kv_usage=sched.kv.usage)

    async def kv_events(self) -> AsyncIterator[list[wire.KvEvent]]:
        """The KV events of each engine step (one consumer at a time), until shutdown."""
        if self.kv is None:
            raise RuntimeError("kv_events() before start()")
        while True:
            while self._events:
                yield self._events.popleft()
            if self._closed:
                return
            self._events_signal.clear()
            await self._events_signal.wait()

    def reset_prefix_cache(self) -> bool:
        """Drop every cached block (AllBlocksCleared); False while requests hold blocks."""
        if self.kv is None or not self.kv.reset():
            return False
        self._publish()
        return True

    async def generate(self, request: wire.GenerateRequest) -> AsyncGenerator[wire.GenerateOutput, None]:
        sched = self._require()
        seq = self._sequence(request)
        stream: _Stream = seq.sink
        self._seqs[request.request_id] = seq
        sched.add(seq)
        self._wakeup.set()
        loop = asyncio.get_running_loop()
        finished = False
        try:
            while True:
                if stream.tokens or seq.status == Status.FINISHED:
                    finished = seq.status == Status.FINISHED
                    if stream.error is not None:
                        raise stream.error
                    frame = self._frame(seq, stream, finished)
                    if finished and request.phase == wire.Phase.PREFILL:
                        assert self.kv_transfer is not None, "_sequence refuses a prefill without one"
                        frame.kv_transfer_params = self.kv_transfer.params(seq.num_prompt, self.engine_id)
                        if seq.lend_kv:
                            self._lent[request.request_id] = seq
                    yield frame
                    if finished:
                        return
                    continue
                stream.waiter = loop.create_future()
                await stream.waiter
                stream.waiter = None
        finally:
            self._seqs.pop(request.request_id, None)
            if not finished:
                self._abort(seq)

    async def release_kv(self, request_id: str) -> None:
        lent = self._lent.pop(request_id, None)
        if lent is not None and self.scheduler is not None:
            self.scheduler.release(lent)
            self._wakeup.set()  # freed blocks may let a waiting request in

    async def abort(self, request_id: str) -> None:
        seq = self._seqs.get(request_id)
        if seq is not None:
            self._abort(seq)
            seq.sink.wake()

    # ------------------------------------------------------------ internals

    def _require(self) -> Scheduler:
        if self.scheduler is None or self._closed:
            raise service_unavailable("the engine is not running")
        return self.scheduler

    def _abort(self, seq: Sequence) -> None:
        if self.scheduler is None:
            return
        if seq.lend_kv and seq.status == Status.FINISHED:  # a finished prefill nobody will hand over
            self.scheduler.release(seq)
            self._wakeup.set()
        elif self.scheduler.abort(seq):
            self._wakeup.set()  # freed blocks may let a waiting request in

    @staticmethod
    def _frame(seq: Sequence, stream: _Stream, finished: bool) -> wire.GenerateOutput:
        tokens, stream.tokens = stream.tokens, []
        logprobs, stream.logprobs = stream.logprobs, None
        return wire.GenerateOutput(
            token_ids=tokens,
            finish_reason=seq.finish_reason if finished else None,
            num_prompt_tokens=seq.num_prompt,
            num_cached_tokens=max(seq.num_cached_tokens, 0),
            logprobs=logprobs,
            stop_token_id=seq.stop_token_id if finished else None,
        )

    def _sequence(self, request: wire.GenerateRequest) -> Sequence:
        assert self.vocab is not None
        if request.request_id in self._seqs:
            raise invalid_request(f"request id {request.request_id!r} is already running")
        _validate(request, self.max_model_len, self.vocab.vocab_size)
        opts = request.sampling
        if request.phase != wire.Phase.AGGREGATED:
            if self.kv_transfer is None:
                raise KvTransferError("this engine has no KV transfer (spec.disaggregation.enabled is false)")
            if request.phase == wire.Phase.DECODE:
                self.kv_transfer.check(request.kv_transfer_params)
            else:  # a prefill computes the prompt and samples one token (discarded by the decode side)
                opts = msgspec.structs.replace(opts, max_tokens=1, min_tokens=0)
        return Sequence(
            request.request_id,
            request.token_ids,
            self.block_size,
            key=request_key(self.seed, request.request_id, opts),
            max_tokens=opts.max_tokens,
            min_tokens=opts.min_tokens,
            stop_token_ids=frozenset(opts.stop_token_ids),
            eos_ids=self.vocab.eos_token_ids,
            ignore_eos=opts.ignore_eos,
            logprobs=opts.logprobs,
            sink=_Stream(),
            remote_kv=request.phase == wire.Phase.DECODE,
            lend_kv=request.phase == wire.Phase.PREFILL,
        )

    async def _run(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail every request loudly rather than hang them
            log.exception("mocker step loop failed")
            self._closed = True
            self._fail_all(server_error(f"the simulated engine failed: {exc}"))
            self._events_signal.set()

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        timing = self.timing
        assert sched is not None and timing is not None
        scale = 1.0 / (1000.0 * self.speedup)  # modelled ms -> real seconds
        clock: float | None = None  # when the previous step was due to end
        burst_start: float | None = None  # first of the zero-time steps run without yielding
        while True:
            if not sched.has_work():
                clock = burst_start = None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            t0 = loop.time()
            step = sched.schedule()
            if not step:
                self._publish()
                if not step.preempted:  # KV transfers in progress, or nothing fits
                    clock = burst_start = None
                    await self._idle_until(sched.next_transfer_end())
                continue
            seconds = step_ms(timing, step.prefill_tokens, step.decode_batch, step.kv_usage) * scale
            # Steps run back to back on a simulated clock: a step that ended late (the
            # event loop wakes timers up to ~1 ms late, other tasks run) shortens the
            # next, so the modelled throughput holds on average. Lag beyond
            # _MAX_CATCH_UP_S (an overloaded process) is dropped, not caught up.
            start = clock if clock is not None and t0 - clock < _MAX_CATCH_UP_S else t0
            clock = start + seconds
            if seconds == 0.0 and (burst_start is None or t0 - burst_start < _MAX_INSTANT_BURST_S):
                burst_start = t0 if burst_start is None else burst_start
            else:
                burst_start = None
                await asyncio.sleep(max(0.0, clock - loop.time()))
            for ev in sched.complete(step):
                stream: _Stream = ev.seq.sink
                stream.tokens.append(ev.token)
                if ev.logprob is not None:
                    if stream.logprobs is None:
                        stream.logprobs = []
                    stream.logprobs.append(ev.logprob)
                stream.wake()
            self._publish()
            self.num_steps += 1
            self.step_log.append(
                (step.prefill_tokens, step.decode_batch, step.kv_usage, seconds, loop.time() - t0)
            )

    async def _idle_until(self, when: float | None) -> None:
        """Wait for new work, or until ``when`` (loop time: a KV transfer ends) if given."""
        self._wakeup.clear()
        if when is None:
            await self._wakeup.wait()
            return
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    def _publish(self) -> None:
        if self.kv is None:
            return
        events = self.kv.take_events()
        if not events:
            return
        if len(self._events) >= MAX_PENDING_EVENT_BATCHES:
            self._events.popleft()
            if not self.events_dropped:
                log.warning("mocker: nobody reads kv_events(); dropping the oldest KV event batches")
            self.events_dropped += 1
        self._events.append(events)
        self._events_signal.set()

    def _fail_all(self, error: BaseException) -> None:
        for seq in list(self._seqs.values()):
            if self.scheduler is not None:
                self.scheduler.abort(seq)
            seq.sink.error = error
            seq.status = Status.FINISHED
            seq.sink.wake()


def _bad(message: str, param: str | None = None) -> ServingError:
    return invalid_request(message, param)


def _validate(request: wire.GenerateRequest, max_model_len: int, vocab_size: int) -> None:
    """vLLM's checks on the prompt and the sampling parameters, with vLLM's messages."""
    n = len(request.token_ids)
    if n == 0:
        raise _bad("The decoder prompt cannot be empty")
    if n > max_model_len:
        raise _bad(
            f"The decoder prompt (length {n}) is longer than the maximum model length of {max_model_len}. "
            "Make sure that `max_model_len` is no smaller than the number of text tokens."
        )
    if n == max_model_len:
        raise _bad(
            f"The decoder prompt (length {n}) plus the number of requested output tokens (at least 1) is "
            f"longer than the maximum model length of {max_model_len}. Make sure that `max_model_len` is "
            "no smaller than the number of text tokens (prompt + requested output tokens)."
        )
    lo, hi = min(request.token_ids), max(request.token_ids)
    if lo < 0 or hi >= vocab_size:
        raise _bad(f"Token id {lo if lo < 0 else hi} is out of vocabulary")
    s = request.sampling
    if not -2.0 <= s.presence_penalty <= 2.0:
        raise _bad(f"presence_penalty must be in [-2, 2], got {s.presence_penalty}.")
    if not -2.0 <= s.frequency_penalty <= 2.0:
        raise _bad(f"frequency_penalty must be in [-2, 2], got {s.frequency_penalty}.")
    if not math.isfinite(s.repetition_penalty) or s.repetition_penalty <= 0.0:
        raise _bad(f"repetition_penalty must be greater than zero, got {s.repetition_penalty}.")
    if not math.isfinite(s.temperature):
        raise _bad(f"temperature must be a finite number, got {s.temperature}.", "temperature")
    if s.temperature < 0.0:
        raise _bad(f"temperature must be non-negative, got {s.temperature}.", "temperature")
    if s.temperature > 2.0:
        raise _bad(f"temperature must be in [0, 2], got {s.temperature}.", "temperature")
    if not 0.0 < s.top_p <= 1.0:
        raise _bad(f"top_p must be in (0, 1], got {s.top_p}.", "top_p")
    if s.top_k < -1:
        raise _bad(f"top_k must be 0 (disable), or at least 1, got {s.top_k}.")
    if s.max_tokens < 1:
        raise _bad(f"max_tokens must be at least 1, got {s.max_tokens}.", "max_tokens")
    if s.min_tokens < 0:
        raise _bad(f"min_tokens must be greater than or equal to 0, got {s.min_tokens}.")
    if s.min_tokens > s.max_tokens:
        raise _bad(f"min_tokens must be less than or equal to max_tokens={s.max_tokens}, got {s.min_tokens}.")
    if s.logprobs is not None:
        if s.logprobs < -1:
            raise _bad(f"logprobs must be non-negative or -1, got {s.logprobs}.", "logprobs")
        wanted = vocab_size if s.logprobs == -1 else s.logprobs
        if wanted > MAX_LOGPROBS:
            raise _bad(
                f"Requested sample logprobs of {wanted}, which is greater than max allowed: {MAX_LOGPROBS}",
                "logprobs",
            )
