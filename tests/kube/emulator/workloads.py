"""Deployments and StatefulSets: the /scale view and an opt-in readiness "controller".

No pods run here, so nothing would ever report a workload ready. Tests that need readiness either
call `set_ready` (one pass of the controller, deterministic) or switch `auto` on, after which every
write of a workload is followed, on the server's loop, by a status write reporting every replica
ready and the generation observed, as the real controllers write once all pods are up.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

from .objects import now
from .store import Key, Obj, Store

DEPLOYMENTS: Key = ("apps", "deployments")
STATEFULSETS: Key = ("apps", "statefulsets")
WORKLOADS = (DEPLOYMENTS, STATEFULSETS)


def scale_of(obj: Obj) -> Obj:
    """The autoscaling/v1 Scale of a workload."""
    meta = obj["metadata"]
    labels = (obj.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    identity = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {k: meta[k] for k in identity if k in meta},
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {
            "replicas": obj.get("status", {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in labels.items()),
        },
    }


def _condition(kind: str, reason: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "lastUpdateTime": now(),
        "lastTransitionTime": now(),
    }


def ready_status(key: Key, obj: Obj) -> dict[str, Any]:
    """The status a controller reports once every replica of the current spec is ready."""
    replicas = obj.get("spec", {}).get("replicas", 1)
    counts = ("updatedReplicas", "readyReplicas", "availableReplicas")
    status: dict[str, Any] = {
        "observedGeneration": obj["metadata"].get("generation", 1),
        "replicas": replicas,
    }
    status |= {field: replicas for field in counts if replicas}  # the real controllers omit zero counts
    if key == DEPLOYMENTS:
        status["conditions"] = [
            _condition("Available", "MinimumReplicasAvailable"),
            _condition("Progressing", "NewReplicaSetAvailable"),
        ]
    else:
        template = json.dumps(obj.get("spec", {}).get("template"), sort_keys=True).encode()
        revision = f"{obj['metadata']['name']}-{hashlib.sha256(template).hexdigest()[:10]}"
        status |= {"currentReplicas": replicas, "currentRevision": revision, "updateRevision": revision}
        status["collisionCount"] = 0
    return status


def _counts(status: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (status or {}).items() if k != "conditions"}


class Readiness:
    def __init__(self, store: Store):
        self.store = store
        self.auto = False
        # How follow-up writes are scheduled: the server sets this to "soon, on the server's loop", so
        # the response to the triggering write goes out first, as with a real controller.
        self.defer: Callable[[Callable[[], Any]], None] = lambda action: action()

    def after_write(self, key: Key, obj: Obj) -> None:
        if self.auto and key in WORKLOADS and not obj["metadata"].get("deletionTimestamp"):
            self.defer(lambda: self._make_ready_if_current(key, obj))

    def make_ready(self, key: Key, obj: Obj) -> Obj:
        status = ready_status(key, obj)
        if _counts(status) == _counts(obj.get("status")):
            return obj  # already reported: no write, no event
        ready = copy.deepcopy(obj)
        ready["status"] = status
        return self.store.put(key, ready, "MODIFIED")

    def _make_ready_if_current(self, key: Key, written: Obj) -> None:
        with self.store.lock:
            meta = written["metadata"]
            current = self.store.get(key, meta.get("namespace"), meta["name"])
            if current is not None and current["metadata"]["uid"] == meta["uid"]:
                self.make_ready(key, current)

    def set_ready(self, keys: tuple[Key, ...] = WORKLOADS, namespace: str | None = None) -> list[Obj]:
        """One pass of the controllers over `keys` in `namespace` (None: all namespaces)."""
        with self.store.lock:
            return [
                self.make_ready(key, obj)
                for key in keys
                for obj in self.store.list(key, namespace)
                if not obj["metadata"].get("deletionTimestamp")
            ]
