"""What happens around writes: CRD registration, finalizers and deletionTimestamp, garbage collection
by ownerReferences (background, foreground, orphan), namespace termination, and the opt-in readiness
"controller" of workloads.py.

The garbage collector runs synchronously right after the delete that orphans dependents, so tests see
a deterministic order of watch events (owner DELETED, then dependents DELETED); the real collector does
the same work asynchronously.
"""

from __future__ import annotations

import copy

from .errors import ApiError, not_found
from .objects import now
from .resources import Registry, ResourceType
from .store import Obj, Store
from .workloads import Readiness

CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES = ("", "namespaces")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


class Lifecycle:
    def __init__(self, store: Store, registry: Registry):
        self.store, self.registry = store, registry
        self.readiness = Readiness(store)

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
        self.readiness.after_write(rtype.key, obj)

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
        self._collect_garbage(obj)
        self._finish_namespaces()
        return gone

    # --- garbage collection ------------------------------------------------------------------------

    def _dependents(self, uid: str) -> list[tuple[tuple[str, str], Obj]]:
        return self.store.dependents(uid)

    def _collect_garbage(self, gone: Obj) -> None:
        """Dependents whose owners are all gone are deleted (background); others keep living. An owner
        in foreground deletion that waited for `gone` may be released."""
        uid = gone["metadata"]["uid"]
        for key, dependent in self._dependents(uid):
            owners = [ref.get("uid") for ref in dependent["metadata"].get("ownerReferences", [])]
            if not any(self.store.by_uid(owner) for owner in owners if owner != uid):
                self._delete_dependent(key, dependent)
        for ref in gone["metadata"].get("ownerReferences") or []:
            found = self.store.by_uid(ref.get("uid", ""))
            if found and FOREGROUND in found[1]["metadata"].get("finalizers", []):
                self._release_foreground(*found)

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
