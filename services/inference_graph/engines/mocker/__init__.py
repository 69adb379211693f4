"""The simulated engine ("mocker"): vLLM's scheduling and KV cache behaviour without a model.

It implements ``engines.base.Engine`` like the vLLM plug-in and is what the
routing, disaggregation and autoscaling layers run against when a graph needs
dozens of workers on a small machine (``engine.type: mocker``):

- ``scheduler``: continuous batching, chunked prefill, admission on free
  blocks, recompute preemption (vLLM v1's FCFS scheduler);
- ``kv_cache``: blocks named by the router's chained hash
  (``core.block_hash``), prefix cache with reference counts, LRU eviction and
  BlockStored/BlockRemoved/AllBlocksCleared events;
- ``timing``: how long a step takes (polynomial, table, instant; registry);
- ``tokens``: deterministic fake tokens from the model's real vocabulary;
- ``engine``: ``MockerEngine``, the asyncio step loop and request streams.

Nothing here does I/O beyond reading the model's config files and a timing
table at start.
"""

from .engine import MockerEngine

__all__ = ["MockerEngine"]
