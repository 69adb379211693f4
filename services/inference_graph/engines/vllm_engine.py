"""The vLLM engine plug-in: ``AsyncLLM`` (vLLM's v1 async engine) behind ``base.Engine``.

Process layout. ``AsyncLLM`` cannot run its engine core in the calling process:
its constructor always builds an ``AsyncMPClient`` (``EngineCoreClient.make_client``
raises "Running EngineCore in asyncio without multiprocessing is not currently
supported"). What ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` with
``distributed_executor_backend="uni"`` buys is one child process instead of two:
the model runs inside the engine-core child rather than in a third worker
process (vLLM on CPU turns "uni" into "mp" unless that variable is 0). Measured
with the tiny model on 2 cores: ready in ~12 s and ~0.9 GB (+ the KV cache)
versus ~19 s and ~1.2 GB for the default layout, at the same tokens/s.
A ``ChildGuard`` kills the engine core if this process dies without ``shutdown``.

Environment (process-global, set with ``setdefault`` so the user's env wins;
read by vLLM and inherited by the engine core child):

- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the two-process layout above.
- ``OMP_NUM_THREADS=1``: one torch thread in the engine core. On a 2-core box
  shared with the other roles, two OpenMP threads spin-wait on each other
  whenever one is descheduled: SmolLM2-135M under CPU contention decoded at
  10 tok/s (batch 1) / 138 tok/s (batch 16) with 2 threads versus 34 / 282
  with 1; on an idle box 1 thread costs ~25% at batch 16 (437 vs 616 tok/s),
  nothing at batch 1 (~60 tok/s). Set it in the role's env to change it.
- ``VLLM_CPU_OMP_THREADS_BIND=nobind``: vLLM reads it only in its "mp"
  executor (not used in our layout, so it has no effect here), whose "auto"
  mode pins every engine on a machine to the same last core and, with a KV
  connector, reserves a second core for NIXL - on 2 cores that cost
  0.5-0.9 s per request in the NIXL measurements.
- ``VLLM_NO_USAGE_STATS=1``, ``VLLM_DO_NOT_TRACK=1``: no usage reporting.
- ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``: only for a local model directory,
  so nothing reaches for a model hub (an ``hf://`` source still can).

KV cache size comes from the ``kv_cache_memory_bytes`` engine argument, not from
``VLLM_CPU_KVCACHE_SPACE``: vLLM 0.32 calls that variable a legacy setting, it
takes whole GiB only and applies to every engine the process starts. If it is
set anyway it overrides ``kv_cache_gib`` (we log a warning).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .. import wire
from ..errors import ServingError, service_unavailable
from ..settings import Env, RuntimeSettings, export
from .base import EngineInfo, EngineLoad
from .child_guard import ChildGuard
from .kv_transfer import KvTransferError, NixlTransfer
from .vllm_kv_events import KvEventSubscriber
from .vllm_outputs import map_error, sampling_params, to_output

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

GiB = 1 << 30
KV_TOPIC = "kv"
# Engine arguments this class derives from its own parameters.
_OWNED_ARGS = ("model", "kv_events_config")


class _ConfigError(ValueError):
    """A spec.engine setting vLLM cannot take; the message names the field."""


def _set_process_env(model_path: str) -> None:
    """vLLM reads these in this process; a value the user set wins (reasons in the module docstring)."""
    values = {
        Env.VLLM_ENABLE_V1_MULTIPROCESSING: "0",
        Env.OMP_NUM_THREADS: "1",
        Env.VLLM_CPU_OMP_THREADS_BIND: "nobind",
        Env.VLLM_NO_USAGE_STATS: "1",
        Env.VLLM_DO_NOT_TRACK: "1",
    }
    if Path(model_path).is_dir():
        values |= {Env.HF_HUB_OFFLINE: "1", Env.TRANSFORMERS_OFFLINE: "1"}
    export(values, overwrite=False)


class _LoadSink:
    """Latest scheduler stats, written by vLLM's stat-logger hook on the event loop."""

    def __init__(self) -> None:
        self.load = EngineLoad(running=0, waiting=0, kv_usage=0.0)

    def factory(self):
        """A per-engine ``StatLoggerFactory`` for ``AsyncLLM(stat_loggers=[...])``."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        sink = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is not None:
                    sink.load = EngineLoad(
                        running=scheduler_stats.num_running_reqs,
                        waiting=scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                        kv_usage=float(scheduler_stats.kv_cache_usage),
                    )

            def log_engine_initialized(self) -> None:
                pass

        return lambda vllm_config, engine_index=0: _Logger(vllm_config, engine_index)


class VllmEngine:
    """One vLLM engine (``AsyncLLM``), its KV event subscription and load.

    ``start()`` loads the model (in a thread: the event loop stays responsive);
    ``generate()`` streams ``wire.GenerateOutput`` frames; closing or cancelling
    the stream aborts the request and frees its KV blocks.
    """

    def __init__(
        self,
        model_path: str,
        *,
        block_size: int = 32,
        max_model_len: int = 2048,
        enable_prefix_caching: bool = True,
        max_num_seqs: int = 64,
        kv_cache_gib: float = 1.0,
        extra_args: dict[str, Any] | None = None,
        served_model_name: str | None = None,
        kv_transfer: NixlTransfer | None = None,
        settings: RuntimeSettings | None = None,
    ):
        """``kv_transfer``: the NIXL connector for disaggregated prefill/decode; None: aggregated only.
        ``settings``: the process's (default: read from the environment now)."""
        extra_args = dict(extra_args or {})
        for key in _OWNED_ARGS:
            if key in extra_args:
                raise ValueError(f"engine.extraArgs.{key} cannot be set: the engine derives it")
        if kv_cache_gib <= 0:
            raise ValueError(f"engine.kvCacheGib must be > 0, got {kv_cache_gib}")
        self.model_path = model_path
        self.served_model_name = served_model_name
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.enable_prefix_caching = enable_prefix_caching
        self.max_num_seqs = max_num_seqs
        self.kv_cache_gib = kv_cache_gib
        self.extra_args = extra_args
        self.kv_transfer = kv_transfer
        self._kvcache_space = (settings or RuntimeSettings.load()).vllm_cpu_kvcache_space
        self.info = EngineInfo(block_size=block_size, num_kv_blocks=0, max_model_len=max_model_len)
        self._llm: AsyncLLM | None = None
        self._sink = _LoadSink()
        self._tmpdir: str | None = None
        self._events: KvEventSubscriber | None = None
        self._guard: ChildGuard | None = None

    # ------------------------------------------------------------ lifecycle

    def _engine_args(self, kv_endpoint: str):
        from vllm.config.kv_events import KVEventsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            served_model_name=self.served_model_name,
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            enable_prefix_caching=self.enable_prefix_caching,
            max_num_seqs=self.max_num_seqs,
            kv_cache_memory_bytes=int(self.kv_cache_gib * GiB),
            distributed_executor_backend="uni",
            # Eager: torch.compile made the first start take 42 s (tiny) to
            # 108 s (SmolLM2) and later starts ~18 s instead of ~12 s, for the
            # same decode speed here; it also changed SmolLM2's greedy answer.
            enforce_eager=True,
            disable_log_stats=True,  # our stat logger still receives stats
            enable_log_requests=False,
            kv_events_config=KVEventsConfig(
                enable_kv_cache_events=True, publisher="zmq", endpoint=kv_endpoint, topic=KV_TOPIC
            ),
        )
        if self.kv_transfer is not None:
            kwargs["kv_transfer_config"] = self.kv_transfer.kv_transfer_config()
        kwargs.update(self.extra_args)
        try:
            return AsyncEngineArgs(**kwargs)
        except TypeError as exc:  # an unknown extraArgs key
            raise _ConfigError(f"engine.extraArgs: {exc}") from None

    async def start(self) -> None:
        if self._llm is not None:
            return
        if self.block_size % 32:
            raise ValueError(
                f"engine.blockSize must be a multiple of 32 for vLLM on CPU, got {self.block_size}"
            )
        _set_process_env(self.model_path)
        if self.kv_transfer is not None:
            self.kv_transfer.prepare_process_env()
        if self._kvcache_space:
            log.warning(
                "%s=%s overrides engine.kvCacheGib=%s for every engine in this process",
                Env.VLLM_CPU_KVCACHE_SPACE,
                self._kvcache_space,
                self.kv_cache_gib,
            )
        import psutil

        self._tmpdir = tempfile.mkdtemp(prefix="ig-vllm-")
        endpoint = f"ipc://{self._tmpdir}/kv-events.sock"
        # Subscribe before the engine exists so no event is published unheard.
        self._events = KvEventSubscriber(endpoint, KV_TOPIC)
        self._guard = guard = ChildGuard()
        guard.remove_on_death(self._tmpdir)
        me = psutil.Process()
        before = {p.pid for p in me.children()} | {guard.pid}

        built: list[AsyncLLM] = []

        def build() -> None:
            from vllm.v1.engine.async_llm import AsyncLLM

            # Handed over in a list, not as the thread's result: the executor's
            # futures and frames would keep the engine alive after shutdown.
            built.append(
                AsyncLLM.from_engine_args(self._engine_args(endpoint), stat_loggers=[self._sink.factory()])
            )

        def guard_new_children() -> None:
            for child in me.children():
                if child.pid not in before and "resource_tracker" not in " ".join(_cmdline(child)):
                    guard.watch(child.pid)

        task = asyncio.ensure_future(asyncio.to_thread(build))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                guard_new_children()
            task.result()
            llm = built.pop()
        except BaseException:
            # Failed or cancelled while loading: whatever vLLM started must go.
            self._guard = None
            if task.done():
                guard.terminate_watched()
            else:  # cancelled: let the load finish in its thread, then stop it

                def stop_late(_: object) -> None:
                    for x in built:
                        x.shutdown()
                    guard.terminate_watched()

                task.add_done_callback(stop_late)
            self._cleanup()
            exc = task.exception() if task.done() and not task.cancelled() else None
            if exc is not None and not isinstance(exc, _ConfigError):
                raise RuntimeError(f"vLLM failed to start for {self.model_path}: {exc}") from exc
            raise
        guard_new_children()
        self._llm = llm
        # Start the output loop now (vLLM would on the first request) so stats
        # and engine failures flow from the start; idempotent.
        getattr(llm, "_run_output_handler", lambda: None)()
        blocks = llm.vllm_config.cache_config.num_gpu_blocks or 0
        self.info = EngineInfo(
            block_size=self.block_size, num_kv_blocks=blocks, max_model_len=self.max_model_len
        )
        log.info("vLLM engine ready: %s, %d KV blocks of %d tokens", self.model_path, blocks, self.block_size)

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()  # SIGTERM to the engine core, waits for it (~3 s)
            del llm
            # AsyncLLM sits in reference cycles; collecting it now runs its
            # __del__ (a second shutdown) while vLLM's modules are still alive,
            # not at interpreter exit where it raises TypeError noise.
            gc.collect()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._guard is not None:
            self._guard.release()
            self._guard = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ------------------------------------------------------------ serving

    def _require(self) -> AsyncLLM:
        if self._llm is None:
            raise service_unavailable("the engine is not running")
        return self._llm

    def load(self) -> EngineLoad:
        return self._sink.load

    async def kv_events(self) -> AsyncIterator[list[wire.KvEvent]]:
        if self._events is None:
            raise RuntimeError("kv_events() before start()")
        async for batch in self._events.batches():
            yield batch

    async def generate(self, request: wire.GenerateRequest) -> AsyncGenerator[wire.GenerateOutput, None]:
        from vllm.inputs import tokens_input

        llm = self._require()
        params = self._phase_params(request)
        stream = llm.generate(tokens_input(list(request.token_ids)), params, request.request_id)
        finished = False
        try:
            async for out in stream:
                frame = to_output(out, len(request.token_ids), params.logprobs)
                finished = out.finished
                if finished and request.phase == wire.Phase.PREFILL:
                    frame.kv_transfer_params = out.kv_transfer_params
                yield frame
        except ServingError as exc:
            # With kv_load_failure_policy "fail", a KV load error finishes the request with "error".
            if request.phase == wire.Phase.DECODE and exc.status >= 500:
                raise KvTransferError(f"the engine could not load the remote KV ({exc.message})") from exc
            raise
        except Exception as exc:
            mapped = map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            if not finished:
                # Closed early, cancelled or failed: make sure the engine drops
                # the request and frees its KV blocks (a no-op if vLLM did).
                await stream.aclose()
                await llm.abort(request.request_id)

    def _phase_params(self, request: wire.GenerateRequest):
        """vLLM's sampling parameters for the request's phase (NixlConnector's protocol)."""
        opts = request.sampling
        if request.phase == wire.Phase.AGGREGATED:
            return sampling_params(opts)
        if self.kv_transfer is None:
            raise KvTransferError("this engine has no KV transfer (spec.disaggregation.enabled is false)")
        if request.phase == wire.Phase.PREFILL:
            # One token, and keep the KV for a remote decode to pull.
            opts = msgspec.structs.replace(opts, max_tokens=1, min_tokens=0)
            transfer = {"do_remote_decode": True}
        else:
            transfer = self.kv_transfer.check(request.kv_transfer_params)
        params = sampling_params(opts)
        params.extra_args = {**(params.extra_args or {}), "kv_transfer_params": dict(transfer)}
        return params

    async def release_kv(self, request_id: str) -> None:
        """Nothing to do: vLLM frees a prefill's blocks when the decode engine's NIXL read
        completes (or after VLLM_NIXL_ABORT_REQUEST_TIMEOUT)."""

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)


def _cmdline(proc: Any) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:
        return []
