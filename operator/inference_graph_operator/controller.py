"""One reconcile pass per graph, and the queue that runs them.

:meth:`GraphController.reconcile` reads the graph and its children fresh, asks the
pure core (``reconcile``) what to do, does it, and writes the status when it
changed. It is synchronous (the official client is) and runs in a thread.

:meth:`GraphController.request` is what every kopf handler calls. Passes of one
graph never overlap, and requests that arrive while a pass runs collapse into one
more pass: creating six children fires six watch events, which cost at most one
extra pass, not six.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import enum
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from inference_graph.core.spec import InferenceGraph, Role

from .crd import SCALER_KIND
from .kube import ApiError, KubeApi
from .reconcile import (
    MISSING,
    Action,
    Desired,
    Plan,
    Problems,
    Verb,
    child_key,
    children_selector,
    desired_children,
    drift,
    graph_status,
    is_controlled_by,
    plan,
    status_patch,
    unschedulable_roles,
)
from .render import OperatorDefaults, child_name, scaler_status

log = logging.getLogger("inference_graph_operator")

# The planner seam (issue #7): (namespace, name, the graph's own etcd endpoints or None for the
# operator's) -> recommended replicas per role, or None.
ReplicaAdvisor = Callable[[str, str, list[str] | None], Mapping[Role, int] | None]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PassResult:
    """What one pass did (for logs and tests)."""

    actions: list[str] = field(default_factory=list)  # "apply Deployment g-decode (missing)"
    failures: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)  # conflicts with other field managers, then forced
    status: dict[str, Any] | None = None
    gone: bool = False  # the graph no longer exists (or is being deleted)
    changed: bool = False  # some child really changed (a no-op patch does not count)


class GraphController:
    def __init__(
        self,
        api: KubeApi,
        defaults: OperatorDefaults,
        advisor: ReplicaAdvisor | None = None,
        clock: Callable[[], str] = utc_now,
    ):
        self.api = api
        self.defaults = defaults
        self.advisor = advisor
        self.clock = clock
        self._queued: dict[tuple[str, str], bool] = {}  # key -> another pass requested while running
        self._current: dict[str, int] = {}  # graph uid -> generation last reconciled without failures
        self._warned_no_scalers = False

    def forget(self, uid: str | None) -> None:
        if uid is not None:
            self._current.pop(uid, None)

    def is_current(self, uid: str | None, generation: int | None) -> bool:
        """Whether a pass already applied this generation of this object (its children events still
        trigger passes, so drift is repaired whatever this says)."""
        return uid is not None and generation is not None and self._current.get(uid) == generation

    # ------------------------------------------------------------ one pass (blocking)

    def reconcile(self, namespace: str, name: str) -> PassResult:
        body = self.api.get_graph(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return PassResult(gone=True)  # garbage collection removes the children
        advise = functools.partial(self._advise, namespace, name) if self.advisor else None
        observed = self.api.list_children(namespace, children_selector(name))
        scalers = SCALER_KIND not in self.api.missing_kinds
        if not scalers and not self._warned_no_scalers:
            self._warned_no_scalers = True
            log.warning(
                "the %s CRD is not installed (kubectl apply -f crds/): roles are scaled without it",
                SCALER_KIND,
            )
        desired = desired_children(body, self.defaults, advise, observed, scalers)
        uid = body["metadata"]["uid"]
        todo = (
            Plan([], []) if desired.error else plan(desired.children, observed, uid, desired.yield_replicas)
        )
        result = PassResult()
        children, conflicts = self._apply(todo, observed, body, result)
        self._scaler_status(desired, children, result)
        children = [c for c in children if c.get("kind") != SCALER_KIND]
        pending = any(
            (d.get("status") or {}).get("readyReplicas", 0) < (d.get("spec") or {}).get("replicas", 0)
            for d in children
            if d.get("kind") == "Deployment"
        )  # the pods are read only while some are not ready
        problems = Problems(
            spec_error=desired.error,
            conflicts=conflicts,
            failures=result.failures,
            unschedulable=unschedulable_roles(self.api.list_pods(namespace, children_selector(name)))
            if pending and desired.error is None
            else {},
        )
        status = graph_status(body, desired, children, problems, result.changed, self.clock())
        patch = status_patch(body.get("status"), status)
        if patch is not None:
            self.api.patch_graph_status(namespace, name, patch)
        result.status = status
        meta = body["metadata"]
        if result.failures or problems.conflicts:
            self._current.pop(meta["uid"], None)
        else:
            self._current[meta["uid"]] = meta.get("generation")
        return result

    def _advise(self, namespace: str, name: str, graph: InferenceGraph) -> Mapping[Role, int] | None:
        """The planner's decision for this graph, from the etcd its planner writes to."""
        assert self.advisor is not None
        return self.advisor(namespace, name, graph.spec.infrastructure.etcd.endpoints)

    def _apply(
        self, todo: Plan, observed: list[dict[str, Any]], graph: Mapping[str, Any], result: PassResult
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Do the plan; returns the children as they are afterwards, and the conflicts found."""
        uid = graph["metadata"]["uid"]
        children = {child_key(obj): obj for obj in observed if is_controlled_by(obj, uid)}
        conflicts = list(todo.conflicts)
        for action in todo.actions:
            try:
                after = self._do(action, graph, result)
            except ApiError as err:
                result.failures.append(f"{action.verb} {action.obj['kind']} {action.key[1]}: {err}")
                continue
            if after is _CONFLICT:
                conflicts.append(f"{action.key[0]} {action.key[1]}")
                continue
            before = children.get(action.key)
            if action.verb is Verb.DELETE:
                children.pop(action.key, None)
            else:
                assert after is not None, "only a delete returns no object"
                children[action.key] = after
            if before is not None and _version(before) == _version(after):
                # The server took the apply and changed nothing: it stores the field in another
                # form (e.g. a quantity "0.5" as "500m"). Not progress; logged at debug only.
                log.debug("apply of %s %s had no effect (%s)", *action.key, action.why)
                continue
            result.changed = True
            result.actions.append(f"{action.verb} {action.key[0]} {action.key[1]} ({action.why})")
        return list(children.values()), sorted(conflicts)

    def _do(
        self, action: Action, graph: Mapping[str, Any], result: PassResult
    ) -> dict[str, Any] | Literal[_Outcome.CONFLICT] | None:
        if action.verb is Verb.DELETE:
            self.api.delete(action.obj)
            return None
        kind, name = action.key
        if action.why == MISSING:
            # Not among our listed children: absent, or an object of that name someone else owns
            # (an apply would merge into it), or ours without our labels (an apply restores them).
            existing = self.api.get(kind, action.obj["metadata"]["namespace"], name)
            if existing is not None and not is_controlled_by(existing, graph["metadata"]["uid"]):
                return _CONFLICT
        obj = action.obj
        after = self._apply_unforced(obj)
        if isinstance(after, str) and action.yield_replicas:
            # The role was scaled (kubectl scale, an HPA) since we listed: its value stands.
            log.info("%s %s: replicas set by another manager; leaving them (%s)", kind, name, after)
            obj = copy.deepcopy(obj)
            del obj["spec"]["replicas"]
            after = self._apply_unforced(obj)
        if not isinstance(after, str):
            return after
        conflict = after
        # A field we render was set to another value by another manager: report it, then take it back
        # (the operator owns what it renders; docs/kubernetes.md, "Server-side apply").
        planner = kind == SCALER_KIND and "replicas" in obj["spec"]
        owner = "the planner's decision (the role autoscales)" if planner else "the graph's values"
        message = f"{kind} {name}: {conflict}; forced back to {owner}"
        result.forced.append(message)
        try:
            self.api.event(graph, "FieldConflict", message)
        except ApiError as err:
            log.warning("event on %s: %s", graph["metadata"]["name"], err)
        return self.api.apply(obj, force=True)

    def _apply_unforced(self, obj: Mapping[str, Any]) -> dict[str, Any] | str:
        """The applied object, or the server's conflict message (409) naming the other managers."""
        try:
            return self.api.apply(obj)
        except ApiError as err:
            if err.status != 409:
                raise
            return err.reason

    def _scaler_status(self, desired: Desired, children: list[dict[str, Any]], result: PassResult) -> None:
        """Each scaler's status from its role's Deployment (what an HPA reads through its scale)."""
        if desired.graph is None:
            return
        by_key = {child_key(c): c for c in children}
        for role in desired.scales:
            name = child_name(desired.graph.metadata.name, role)
            scaler = by_key.get((SCALER_KIND, name))
            if scaler is None:
                continue
            want = scaler_status(desired.graph, role, by_key.get(("Deployment", name)))
            if drift(want, scaler.get("status") or {}) is None:
                continue
            body = {
                "apiVersion": scaler["apiVersion"],
                "kind": SCALER_KIND,
                "metadata": {"name": name, "namespace": scaler["metadata"]["namespace"]},
                "status": want,
            }
            try:
                self.api.apply_status(body)
            except ApiError as err:
                result.failures.append(f"status of {SCALER_KIND} {name}: {err}")

    # ------------------------------------------------------------ the queue (async)

    async def request(self, namespace: str, name: str) -> None:
        """Reconcile soon; returns once a pass that started after this call has finished,
        or at once when a running pass will be followed by one that covers it."""
        key = (namespace, name)
        if key in self._queued:
            self._queued[key] = True
            return
        self._queued[key] = False
        try:
            while True:
                await self._pass(namespace, name)
                if not self._queued[key]:
                    break
                self._queued[key] = False
        finally:
            del self._queued[key]

    async def resync_forever(self, namespace: str, interval: float) -> None:
        """Every ``interval`` seconds, a pass over every graph (in ``namespace``; "" = all)."""
        while True:
            await asyncio.sleep(interval)  # the resync period, not a wait for something to happen
            try:
                graphs = await asyncio.to_thread(self.api.list_graphs, namespace)
            except ApiError as err:
                log.warning("resync: listing graphs: %s", err)
                continue
            await asyncio.gather(*(self.request(ns, name) for ns, name in graphs))

    async def _pass(self, namespace: str, name: str) -> None:
        try:
            result = await asyncio.to_thread(self.reconcile, namespace, name)
        except ApiError as err:  # reading failed: the next event or the resync retries
            log.warning("reconcile %s/%s: %s", namespace, name, err)
            return
        for line in result.actions:
            log.info("%s/%s: %s", namespace, name, line)
        for line in result.forced:
            log.warning("%s/%s: conflict: %s", namespace, name, line)
        for line in result.failures:
            log.warning("%s/%s: %s", namespace, name, line)


class _Outcome(enum.Enum):
    CONFLICT = "conflict"  # the object exists and another owner controls it


_CONFLICT = _Outcome.CONFLICT


def _version(obj: Mapping[str, Any] | None) -> str | None:
    return (obj or {}).get("metadata", {}).get("resourceVersion")
