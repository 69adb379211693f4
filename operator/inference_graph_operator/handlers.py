"""kopf glue: which events lead to a reconcile pass. All decisions live in ``reconcile``.

- An InferenceGraph's watch event (created, changed, or listed at start-up: an operator
  restart converges the same way a first start does) → a pass for it, unless the
  controller has already reconciled this object (uid) at this generation: the operator's
  own status writes do not change the generation and cost no pass.
- A child (Deployment, Service, ConfigMap, InferenceGraphScaler with our ``managed-by``
  label) changes or is deleted → a pass for the graph that controls it: drift is undone,
  a scaled role's Deployment follows its scaler, and the status follows the Deployments'
  readiness.
- Every ``resync_seconds`` the controller lists the graphs and passes over each, in case a
  watch event was missed or a write failed (an operator-wide task started and stopped with
  kopf, not a kopf timer: kopf puts a finalizer on every object that has timers, and a
  finalizer left behind by an uninstalled operator blocks the graph's deletion).

Only event handlers, so kopf keeps no state on the graph (no progress or diff-base
annotations, no finalizer): a pass is idempotent and reads everything fresh, so there is
nothing to remember, and children go with their owner through the garbage collector.
Failed writes show in the status (``ApplyFailed``) and are retried by the next event or
the resync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from inference_graph.core.spec import API_GROUP, KIND
from inference_graph.settings import OperatorSettings

from .config import OperatorConfig
from .controller import GraphController
from .crd import PLURAL, SCALER_PLURAL, VERSION
from .planner_advice import PlannerAdvice
from .reconcile import MANAGED_BY
from .render import INSTANCE_LABEL, MANAGED_BY_LABEL

CHILD_RESOURCES = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("policy", "v1", "poddisruptionbudgets"),
    (API_GROUP, VERSION, SCALER_PLURAL),
)
ANNOTATION_PREFIX = API_GROUP


async def graph_event(body: Mapping[str, Any], type: str | None, memo: kopf.Memo, **_: Any) -> None:
    meta = body["metadata"]
    if type == "DELETED":
        memo.controller.forget(meta.get("uid"))
        return
    if memo.controller.is_current(meta.get("uid"), meta.get("generation")):
        return
    await memo.controller.request(meta["namespace"], meta["name"])


async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_task = asyncio.create_task(
        memo.controller.resync_forever(memo.namespace, memo.resync_seconds)
    )


async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    for name in ("resync_task", "advice_task"):
        task = memo.get(name)
        if task is not None:
            task.cancel()


async def start_planner_advice(memo: kopf.Memo, **_: Any) -> None:
    """Follow the planners' decisions in etcd (graphs whose roles autoscale)."""
    if memo.get("advice") is not None:
        memo.advice_task = asyncio.create_task(memo.advice.run(memo.controller))


async def child_changed(body: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    owner = controlling_graph(body)
    if owner is not None:
        await memo.controller.request(body["metadata"]["namespace"], owner)


def unschedulable(body: Mapping[str, Any], **_: Any) -> bool:
    """A pod the scheduler cannot place (PodScheduled False): the only pod events that cost a pass."""
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False"
        for c in (body.get("status") or {}).get("conditions") or []
    )


async def pod_unschedulable(body: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """A pass for the graph of a pod the scheduler gave up on (its instance label): the status then names
    the role and the scheduler's reason (pods are owned by ReplicaSets, not by the graph)."""
    graph = (body["metadata"].get("labels") or {}).get(INSTANCE_LABEL)
    if graph:
        await memo.controller.request(body["metadata"]["namespace"], graph)


def controlling_graph(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion", "").startswith(API_GROUP)
        ):
            return ref.get("name")
    return None


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own login, without the official client (whose kubeconfig path is fixed at import).
    Same order as ``RestKubeApi.from_environment``: $KUBECONFIG, the service account, ~/.kube/config."""
    if OperatorSettings.load().kubeconfig:
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # an int: kopf compares it with record levels
    # Unused while every handler is an event handler; set so that a state-keeping
    # handler added later keeps its progress in annotations, not in our status schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300  # re-list now and then: a missed event heals itself
    # No watching of CRDs and namespaces: kopf finds our resources by API discovery once at start (the
    # CRDs come with the chart, before the operator) and watches the namespace it is given or all of them.
    # So the chart's RBAC needs neither (the real authorizer in tests/kube/test_operator.py proves it):
    # namespaced, kopf would otherwise retry its forbidden namespace list for a minute before it starts.
    settings.scanning.disabled = True


def make_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    graph = (API_GROUP, VERSION, PLURAL)
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry)(start_resync)
    kopf.on.startup(registry=registry)(start_planner_advice)
    kopf.on.cleanup(registry=registry)(stop_resync)
    kopf.on.event(*graph, registry=registry)(graph_event)
    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(group, version, plural, registry=registry, labels={MANAGED_BY_LABEL: MANAGED_BY})(
            child_changed
        )
    kopf.on.event(
        "", "v1", "pods", registry=registry, labels={MANAGED_BY_LABEL: MANAGED_BY}, when=unschedulable
    )(pod_unschedulable)
    return registry


def memo_for(
    controller: GraphController, config: OperatorConfig, advice: PlannerAdvice | None = None
) -> kopf.Memo:
    return kopf.Memo(
        controller=controller, namespace=config.namespace, resync_seconds=config.resync_seconds, advice=advice
    )
