"""What happens around writes: CRD registration, finalizers and deletionTimestamp, garbage collection
by ownerReferences (background, foreground, orphan), namespace termination, and an optional Deployment
"controller" that makes Deployments ready on demand.

The garbage collector runs synchronously right after the delete that orphans dependents, so tests see
a deterministic order of watch events (owner DELETED, then dependents DELETED); the real collector does
the same work asynchronously.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .errors import ApiError, not_found
from .objects import now
from .resources import Registry, ResourceType
from .store import Obj, Store

CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES = ("", "namespaces")
DEPLOYMENTS = ("apps", "deployments")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


class Lifecycle:
    def __init__(self, store: Store, registry: Registry):
        self.store, self.registry = store, registry
        self.auto_ready_deployments = False  # the fixture's switch: Deployments become ready on write
        # How follow-up writes (a controller reacting to a write) are scheduled: the server sets this to
        # "soon, on the server's loop", so the response to the triggering write goes out first.
        self.defer: Callable[[Callable[[], Any]], None] = lambda action: action()

    # --- create ------------------------------------------------------------------------------------

    def check_can_create(self, rtype: ResourceType, obj: Obj) -> None:
        """Namespaced objects need an existing, active namespace (NotFound / Forbidden otherwise)."""
        if not rtype.namespaced:
            return
        namespace = obj["metadata"]["namespace"]
        ns = self.store.get(NAMESPACES, None, namespace)
        if ns is None:
            raise not_found("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            message = f'{rtype.plural} "{obj["metadata"]["name"]}" is forbidden: unable to create new content in namespace {namespace} because it is being terminated'
            raise ApiError(403, "Forbidden", message, {"name": obj["metadata"]["name"], "kind": rtype.plural})

    def before_create(self, rtype: ResourceType, obj: Obj) -> None:
        if rtype.key == CRDS:  # accepted and established at once: there is no discovery lag to emulate
            spec = obj["spec"]
            conditions = [
                {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now()}
                for t, r, m in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ]
            stored = [v["name"] for v in spec.get("versions", []) if v.get("storage")]
            obj["status"] = {
                "conditions": conditions,
                "acceptedNames": spec["names"],
                "storedVersions": stored,
            }

    # --- after every write -------------------------------------------------------------------------

    def after_write(self, rtype: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rtype.key, obj)
            return
        if rtype.key == CRDS and not meta.get("deletionTimestamp"):
            self.registry.register_crd(obj)
        if rtype.key == DEPLOYMENTS and self.auto_ready_deployments and not meta.get("deletionTimestamp"):
            self.defer(lambda: self._make_ready_if_current(obj))

    # --- delete ------------------------------------------------------------------------------------

    def delete(self, rtype: ResourceType, live: Obj, policy: str) -> Obj:
        """DELETE: mark (finalizers pending) or remove; dependents follow the propagation policy."""
        if policy not in ("Background", "Foreground", "Orphan"):
            raise ApiError(422, "Invalid", f"DeleteOptions.propagationPolicy: Unsupported value: {policy!r}")
        if policy == "Orphan":
            self._orphan_dependents(live)
        extra = [FOREGROUND] if policy == "Foreground" and self._dependents(live["metadata"]["uid"]) else []
        if rtype.key == NAMESPACES:
            return self._terminate_namespace(live)
        if not live["metadata"].get("finalizers") and not extra:
            return self._remove(rtype.key, live)
        return self._mark_deleted(rtype.key, live, extra)

    def _mark_deleted(self, key: tuple[str, str], live: Obj, extra_finalizers: list[str]) -> Obj:
        marked = copy.deepcopy(live)
        meta = marked["metadata"]
        meta.setdefault("deletionTimestamp", now())
        meta.setdefault("deletionGracePeriodSeconds", 0)
        meta["finalizers"] = [
            *meta.get("finalizers", []),
            *(f for f in extra_finalizers if f not in meta.get("finalizers", [])),
        ]
        stored = live if marked == live else self.store.put(key, marked, "MODIFIED")
        if FOREGROUND in meta["finalizers"]:
            for dep_key, dependent in self._dependents(meta["uid"]):
                self._delete_dependent(dep_key, dependent)
            self._release_foreground(key, stored)
        return stored

    def _remove(self, key: tuple[str, str], obj: Obj) -> Obj:
        gone = self.store.remove(key, obj)
        if key == CRDS:
            self._drop_custom_objects(obj)
        self._collect_garbage(obj["metadata"]["uid"])
        self._finish_namespaces()
        return gone

    # --- garbage collection ------------------------------------------------------------------------

    def _dependents(self, uid: str) -> list[tuple[tuple[str, str], Obj]]:
        return [
            (key, obj)
            for key in self.store.keys()
            for obj in self.store.list(key)
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences", []))
        ]

    def _owner_exists(self, uid: str) -> bool:
        return any(obj["metadata"]["uid"] == uid for key in self.store.keys() for obj in self.store.list(key))

    def _collect_garbage(self, owner_uid: str) -> None:
        """Dependents whose owners are all gone are deleted (background); others keep living."""
        for key, dependent in self._dependents(owner_uid):
            owners = [
                ref["uid"]
                for ref in dependent["metadata"].get("ownerReferences", [])
                if ref.get("uid") != owner_uid
            ]
            if not any(self._owner_exists(uid) for uid in owners):
                self._delete_dependent(key, dependent)
        # an owner waiting in foreground deletion for this dependent may now be released
        for key in self.store.keys():
            for obj in self.store.list(key):
                if FOREGROUND in obj["metadata"].get("finalizers", []):
                    self._release_foreground(key, obj)

    def _delete_dependent(self, key: tuple[str, str], dependent: Obj) -> None:
        current = self.store.get(key, dependent["metadata"].get("namespace"), dependent["metadata"]["name"])
        if current is None or current["metadata"].get("deletionTimestamp"):
            return
        if current["metadata"].get("finalizers"):
            self._mark_deleted(key, current, [])
        else:
            self._remove(key, current)

    def _release_foreground(self, key: tuple[str, str], owner: Obj) -> None:
        if self._dependents(owner["metadata"]["uid"]):
            return
        released = copy.deepcopy(owner)
        released["metadata"]["finalizers"] = [f for f in owner["metadata"]["finalizers"] if f != FOREGROUND]
        if released["metadata"]["finalizers"]:
            self.store.put(key, released, "MODIFIED")
        else:
            self._remove(key, self.store.put(key, released, "MODIFIED"))

    def _orphan_dependents(self, owner: Obj) -> None:
        uid = owner["metadata"]["uid"]
        for key, dependent in self._dependents(uid):
            freed = copy.deepcopy(dependent)
            refs = [r for r in freed["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if refs:
                freed["metadata"]["ownerReferences"] = refs
            else:
                del freed["metadata"]["ownerReferences"]
            self.store.put(key, freed, "MODIFIED")

    # --- namespaces and CRDs -----------------------------------------------------------------------

    def _terminate_namespace(self, ns: Obj) -> Obj:
        """Namespace deletion: Terminating, every object in it deleted, gone once empty."""
        name = ns["metadata"]["name"]
        marked = copy.deepcopy(ns)
        marked["metadata"].setdefault("deletionTimestamp", now())
        marked["status"] = {"phase": "Terminating"}
        stored = ns if marked == ns else self.store.put(NAMESPACES, marked, "MODIFIED")
        for key in self.store.keys():
            for obj in self.store.list(key, name):
                self._delete_dependent(key, obj)
        self._finish_namespaces()
        return self.store.get(NAMESPACES, None, name) or stored

    def _finish_namespaces(self) -> None:
        for ns in self.store.list(NAMESPACES):
            name = ns["metadata"]["name"]
            if ns["metadata"].get("deletionTimestamp") and not ns["metadata"].get("finalizers"):
                if not any(self.store.list(key, name) for key in self.store.keys() if key != NAMESPACES):
                    self.store.remove(NAMESPACES, ns)

    def _drop_custom_objects(self, crd: Obj) -> None:
        """Deleting a CRD deletes its objects (the real API waits for them; finalizers are skipped)."""
        key = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        for obj in self.store.list(key):
            self.store.remove(key, obj)
        self.registry.unregister_crd(crd["metadata"]["name"])

    # --- Deployments: scale and readiness ----------------------------------------------------------

    @staticmethod
    def scale_of(obj: Obj) -> Obj:
        meta = obj["metadata"]
        labels = (obj.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
            "status": {
                "replicas": obj.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in labels.items()),
            },
        }

    def make_ready(self, deployment: Obj) -> Obj:
        """Status as the Deployment controller writes it once every pod of the spec is ready."""
        replicas = deployment.get("spec", {}).get("replicas", 1)
        ready = copy.deepcopy(deployment)
        ready["status"] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "lastUpdateTime": now(),
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "lastUpdateTime": now(),
                },
            ],
        }
        if replicas == 0:
            for field in ("readyReplicas", "availableReplicas", "updatedReplicas"):
                del ready["status"][field]
        if _counts(ready["status"]) == _counts(deployment.get("status")):
            return deployment
        return self.store.put(DEPLOYMENTS, ready, "MODIFIED")

    def _make_ready_if_current(self, written: Obj) -> None:
        with self.store.lock:
            meta = written["metadata"]
            current = self.store.get(DEPLOYMENTS, meta.get("namespace"), meta["name"])
            if current is not None and current["metadata"]["uid"] == meta["uid"]:
                self.make_ready(current)

    def set_deployments_ready(self, namespace: str | None = None) -> list[Obj]:
        with self.store.lock:
            return [
                self.make_ready(d)
                for d in self.store.list(DEPLOYMENTS, namespace)
                if not d["metadata"].get("deletionTimestamp")
            ]


def _counts(status: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (status or {}).items() if k != "conditions"}
