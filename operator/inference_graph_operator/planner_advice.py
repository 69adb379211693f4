"""The planner's decisions, for the controller's replica advisor.

A graph whose prefill or decode role autoscales runs a planner Deployment; the
planner stores ``{role: replicas}`` in etcd under the graph's runtime namespace
(``/ig/{graph name}/planner/replicas``), exactly as it does under the local
launcher. This watches those keys in the operator's etcd (the chart's) and:

- answers ``advisor(namespace, name)`` from the latest decision (called from the
  reconcile pass, which keeps the counts within the role's bounds and ignores
  roles that do not autoscale: ``reconcile.decide_replicas``);
- requests a pass of every graph of that name when its decision changes, so the
  Deployments follow within one pass.

Graphs whose ``spec.infrastructure.etcd`` names another etcd are not watched:
their planner's decisions are not applied (documented limitation).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery

from .controller import GraphController

log = logging.getLogger(__name__)

RETRY_S = 5.0  # etcd unreachable at start: try again after this long
_ROLES = frozenset(role.value for role in Role)


class PlannerAdvice:
    def __init__(self, etcd_endpoints: tuple[str, ...]):
        self.endpoints = list(etcd_endpoints)
        self._decisions: dict[str, dict[str, int]] = {}  # runtime namespace (graph name) -> decision
        self._graphs: dict[str, set[str]] = {}  # graph name -> Kubernetes namespaces seen with it

    def __call__(self, namespace: str, name: str) -> Mapping[Role, int] | None:
        """The latest decision for graph ``name`` (called from the reconcile thread)."""
        self._graphs.setdefault(name, set()).add(namespace)
        decision = self._decisions.get(name)
        if decision is None:
            return None
        return {Role(role): count for role, count in decision.items() if role in _ROLES}

    async def run(self, controller: GraphController) -> None:
        """Watch decisions until cancelled; reconnect while etcd is unreachable."""
        while True:
            try:
                discovery = await Discovery.connect(self.endpoints)
            except Exception as err:
                log.warning("planner decisions: etcd %s unreachable (%s); retrying", self.endpoints, err)
                await asyncio.sleep(RETRY_S)  # retry backoff, not synchronisation
                continue
            try:
                await self._follow(discovery, controller)
            finally:
                await discovery.close()

    async def _follow(self, discovery: Discovery, controller: GraphController) -> None:
        watch = await discovery.watch_planner_decisions()
        changed: asyncio.Queue[str] = asyncio.Queue()

        def on_decision(event: str, value: tuple[str, dict[str, int]]) -> None:
            graph, replicas = value
            if event == "added":
                self._decisions[graph] = replicas
            else:
                self._decisions.pop(graph, None)
            changed.put_nowait(graph)

        watch.add_listener(on_decision)
        for graph, (_, replicas) in watch.snapshot.items():
            self._decisions[graph] = replicas
        try:
            while True:
                graph = await changed.get()
                for namespace in sorted(self._graphs.get(graph, ())):
                    log.info("planner decision for %s/%s: %s", namespace, graph, self._decisions.get(graph))
                    await controller.request(namespace, graph)
        finally:
            await watch.close()
