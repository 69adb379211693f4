"""kopf glue: which events lead to a reconcile pass. All decisions live in ``reconcile``.

- An InferenceGraph is created, changed, or found at start-up (``resume``: an operator
  restart converges the same way a first start does) → a pass for it.
- A child (Deployment, Service, ConfigMap with our ``managed-by`` label) changes or
  is deleted → a pass for the graph that controls it: drift is undone and the status
  follows the Deployments' readiness.
- A timer per graph → a pass every ``resync_seconds``, in case a watch event was missed.

No finalizers and no delete handler: children go with their owner through the garbage
collector. Progress is kept in annotations (the status belongs to the graph's schema).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from inference_graph.core.spec import API_GROUP, KIND

from .config import OperatorConfig
from .controller import GraphController
from .crd import PLURAL, VERSION
from .reconcile import MANAGED_BY
from .render import MANAGED_BY_LABEL

CHILD_RESOURCES = (("", "v1", "configmaps"), ("", "v1", "services"), ("apps", "v1", "deployments"))
ANNOTATION_PREFIX = API_GROUP


async def graph_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.request(namespace, name)


async def child_changed(body: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    owner = controlling_graph(body)
    if owner is not None:
        await memo.controller.request(body["metadata"]["namespace"], owner)


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
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # an int: kopf compares it with record levels
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300  # re-list now and then: a missed event heals itself


def make_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    graph = (API_GROUP, VERSION, PLURAL)
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(configure)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*graph, registry=registry, id="reconcile")(graph_changed)
    kopf.timer(
        *graph, registry=registry, interval=config.resync_seconds, initial_delay=config.resync_seconds
    )(graph_changed)
    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(group, version, plural, registry=registry, labels={MANAGED_BY_LABEL: MANAGED_BY})(
            child_changed
        )
    return registry


def memo_for(controller: GraphController) -> kopf.Memo:
    return kopf.Memo(controller=controller)
