"""vLLM's NixlConnector without NIXL's progress thread, for engines on CPU.

vLLM loads this module in the engine core (``kv_connector_module_path``; the
engine core is a spawned process on CPU, so a change made in the worker process
would not reach it) and takes ``NixlConnector`` from it: the class is vLLM's own,
unchanged. Importing the module first wraps the ``nixl_agent_config`` factory
vLLM's NIXL worker uses, so the agent is created with ``enable_prog_thread=False``.

Why: that thread busy-polls UCX. Measured here, an idle engine core with it used
97% of a core; two idle NIXL engines would take both cores of this machine.
vLLM exposes no switch. Without the thread, UCX progresses when vLLM polls its
transfers, which it does every engine step (``get_finished``). On GPU clusters
(``bufferDevice: cuda``) or with ``IG_NIXL_PROGRESS_THREAD=1`` this module is
not used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlConnector, base_worker

log = logging.getLogger(__name__)

__all__ = ["NixlConnector"]


class _ConfigWithoutProgressThread:
    """NIXL's ``nixl_agent_config`` factory, always with ``enable_prog_thread=False``."""

    def __init__(self, original: Callable[..., Any]):
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["enable_prog_thread"] = False
        log.info("NIXL agent created without its progress thread (CPU buffers)")
        return self.original(*args, **kwargs)


def _without_progress_thread() -> None:
    original = base_worker.nixl_agent_config
    if original is None or isinstance(original, _ConfigWithoutProgressThread):
        return
    base_worker.nixl_agent_config = _ConfigWithoutProgressThread(original)


_without_progress_thread()
