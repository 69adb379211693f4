"""The planner's decisions, for the controller's replica advisor.

A graph whose prefill or decode role autoscales runs a planner Deployment; the
planner stores ``{role: replicas}`` in etcd under the graph's runtime namespace
(``/ig/{graph name}/planner/replicas``), exactly as it does under the local
launcher. The planner writes to the graph's etcd: the chart's (the operator's
default), or the one ``spec.infrastructure.etcd.endpoints`` names. This watches
every etcd the graphs use and:

- answers ``advisor(namespace, name, etcd)`` from the latest decision in that
  etcd (called from the reconcile pass, which keeps the counts within the role's
  bounds and ignores roles that do not autoscale: ``reconcile.decide_replicas``);
- requests a pass of every graph of that name on that etcd when its decision
  changes, so the Deployments follow within one pass.

The chart's etcd (``IG_DEFAULT_ETCD_ENDPOINTS``, if set) is followed from the
start; another one from the first pass of a graph that names it, until the operator stops (one watch per distinct etcd).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery

from .controller import GraphController

log = logging.getLogger(__name__)

RETRY_S = 5.0  # etcd unreachable: try again after this long
_ROLES = frozenset(role.value for role in Role)

Endpoints = tuple[str, ...]


class PlannerAdvice:
    def __init__(self, etcd_endpoints: Endpoints):
        self.default: Endpoints = tuple(etcd_endpoints)
        self._decisions: dict[Endpoints, dict[str, dict[str, int]]] = {}  # etcd -> graph name -> decision
        self._graphs: dict[tuple[Endpoints, str], set[str]] = {}  # (etcd, graph name) -> namespaces seen
        self._followers: dict[Endpoints, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._controller: GraphController | None = None

    def __call__(
        self, namespace: str, name: str, etcd: Sequence[str] | None = None
    ) -> Mapping[Role, int] | None:
        """The latest decision for graph ``name`` in its etcd (``None``: the default); called from the
        reconcile thread. The first call naming an etcd starts following it."""
        endpoints = tuple(etcd) if etcd else self.default
        if not endpoints:  # no etcd named and none by default: no planner to follow
            return None
        self._graphs.setdefault((endpoints, name), set()).add(namespace)
        if endpoints not in self._followers and self._loop is not None:
            self._loop.call_soon_threadsafe(self._follow, endpoints)
        decision = self._decisions.get(endpoints, {}).get(name)
        if decision is None:
            return None
        return {Role(role): count for role, count in decision.items() if role in _ROLES}

    async def run(self, controller: GraphController) -> None:
        """Follow the default etcd, and every other one the graphs name, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._controller = controller
        if self.default:
            self._follow(self.default)
        for endpoints, _ in list(self._graphs):  # named by passes that ran before this started
            self._follow(endpoints)
        try:
            await asyncio.Event().wait()  # the followers do the work; this only owns them
        finally:
            for task in self._followers.values():
                task.cancel()

    def _follow(self, endpoints: Endpoints) -> None:
        """Start following ``endpoints`` (on the operator's loop) unless it already is."""
        if endpoints not in self._followers:
            self._followers[endpoints] = asyncio.create_task(
                self._follow_forever(endpoints), name=f"planner-decisions-{','.join(endpoints)}"
            )

    async def _follow_forever(self, endpoints: Endpoints) -> None:
        """Watch one etcd's decisions; reconnect while it is unreachable."""
        while True:
            try:
                discovery = await Discovery.connect(list(endpoints))
            except Exception as err:
                log.warning("planner decisions: etcd %s unreachable (%s); retrying", endpoints, err)
                await asyncio.sleep(RETRY_S)  # retry backoff, not synchronisation
                continue
            try:
                await self._watch(endpoints, discovery)
            except Exception as err:
                log.warning("planner decisions: watching etcd %s failed (%s); reconnecting", endpoints, err)
                await asyncio.sleep(RETRY_S)
            finally:
                await discovery.close()

    async def _watch(self, endpoints: Endpoints, discovery: Discovery) -> None:
        watch = await discovery.watch_planner_decisions()
        decisions = self._decisions.setdefault(endpoints, {})
        changed: asyncio.Queue[str] = asyncio.Queue()

        def on_decision(event: str, value: tuple[str, dict[str, int]]) -> None:
            graph, replicas = value
            if event == "added":
                decisions[graph] = replicas
            else:
                decisions.pop(graph, None)
            changed.put_nowait(graph)

        watch.add_listener(on_decision)
        # The snapshot replaces what an earlier connection saw (decisions removed meanwhile go);
        # every graph it touches gets a pass, including those reconciled before this etcd was followed.
        before = set(decisions)
        decisions.clear()
        decisions.update({graph: replicas for graph, (_, replicas) in watch.snapshot.items()})
        for graph in sorted(before | set(decisions)):
            changed.put_nowait(graph)
        try:
            while True:
                graph = await changed.get()
                for namespace in sorted(self._graphs.get((endpoints, graph), ())):
                    log.info("planner decision for %s/%s: %s", namespace, graph, decisions.get(graph))
                    assert self._controller is not None
                    await self._controller.request(namespace, graph)
        finally:
            await watch.close()
