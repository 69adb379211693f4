"""The verbs, independent of HTTP: create, get, list, update, patch, delete, on one resource type.

Every write goes through `_store_write`: status-subresource rules, CRD pruning/defaulting/validation,
resourceVersion preconditions, generation, no-op detection, then the lifecycle hooks (CRD registration,
finalizers, garbage collection) in `lifecycle.Lifecycle`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from . import builtin_schema, managed_fields, objects, patching, schema, validation
from .errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    method_not_allowed,
    not_found,
    stale,
    unsupported_media_type,
)
from .lifecycle import Lifecycle
from .resources import Registry, ResourceType
from .selectors import field_selector, label_selector
from .store import Obj, Store
from .workloads import scale_of


@dataclass(frozen=True)
class WriteOptions:
    strict: bool = False  # fieldValidation=Strict: unknown fields fail the request instead of being dropped
    dry_run: bool = False  # dryRun=All: admitted and answered, never stored
    manager: str = ""  # fieldManager, or the client's user agent as the real server defaults it
    force: bool = False  # server-side apply takes over fields other managers own
    applied: bool = False  # the write is a server-side apply: its Apply entry is already in managedFields


DEFAULT = WriteOptions()


class Api:
    def __init__(self, history: int = 100_000) -> None:
        self.store = Store(history)  # watch events kept for watches that start from a resourceVersion
        self.registry = Registry()
        self.lifecycle = Lifecycle(self.store, self.registry)
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.registry.get("", "v1", "namespaces"), None, {"metadata": {"name": name}})

    # --- reads -------------------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.store.lock:
            obj = self.store.get(rtype.key, namespace, name)
            if obj is None:
                raise not_found(rtype.plural, rtype.group, name)
            return self.as_version(rtype, obj)

    def list(self, rtype: ResourceType, namespace: str | None, labels: str | None, fields: str | None) -> Obj:
        by_label, by_field = label_selector(labels), field_selector(fields)
        with self.store.lock:
            items = [
                self.as_version(rtype, o)
                for o in self.store.list(rtype.key, namespace)
                if by_label(o) and by_field(o)
            ]
            rv = str(self.store.resource_version)
        if rtype.crd is None:  # typed lists of built-in kinds leave apiVersion/kind out of their items
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return {
            "apiVersion": rtype.group_version,
            "kind": rtype.list_kind,
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    @staticmethod
    def as_version(rtype: ResourceType, obj: Obj) -> Obj:
        """A copy served under the requested version (all versions share storage)."""
        served = copy.deepcopy(obj)
        served["apiVersion"], served["kind"] = rtype.group_version, rtype.kind
        return served

    # --- writes ------------------------------------------------------------------------------------

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Obj, opts: WriteOptions = DEFAULT
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        with self.store.lock:
            obj = objects.new_object(rtype, namespace, body)
            self.lifecycle.check_can_create(rtype, obj)
            self._admit(rtype, obj, opts.strict)
            if (
                self.store.get(rtype.key, namespace if rtype.namespaced else None, obj["metadata"]["name"])
                is not None
            ):
                raise already_exists(rtype.plural, rtype.group, obj["metadata"]["name"])
            self.lifecycle.before_create(rtype, obj)
            if not opts.applied:
                managed_fields.record_update(None, obj, opts.manager)
            if opts.dry_run:
                return self.as_version(rtype, obj)
            stored = self.store.put(rtype.key, obj, "ADDED")
            self.lifecycle.after_write(rtype, stored)
            return self.as_version(rtype, stored)

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        subresource: str | None,
        opts: WriteOptions = DEFAULT,
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        with self.store.lock:
            live = self._live(rtype, namespace, name)
            if subresource == "scale":
                return self._write_scale(rtype, live, body, opts)
            if rtype.crd is not None and not body.get("metadata", {}).get("resourceVersion"):
                # custom resources allow no unconditional update (built-in kinds mostly do)
                cause = {
                    "reason": "FieldValueInvalid",
                    "field": "metadata.resourceVersion",
                    "message": "Invalid value: 0x0: must be specified for an update",
                }
                raise invalid(rtype.kind, rtype.group, name, [cause])
            return self._store_write(rtype, live, body, subresource, opts)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        subresource: str | None,
        opts: WriteOptions = DEFAULT,
    ) -> Obj:
        if content_type == patching.STRATEGIC and rtype.crd is not None:
            raise unsupported_media_type(
                ", ".join((patching.JSON_PATCH, patching.MERGE_PATCH, patching.APPLY))
            )
        applying = content_type == patching.APPLY
        with self.store.lock:
            live = self.store.get(rtype.key, namespace if rtype.namespaced else None, name)
            if live is None:
                if applying and subresource is None:  # apply creates
                    created = managed_fields.server_side_apply(None, body, opts.manager, opts.force)
                    created.setdefault("metadata", {})["name"] = name
                    return self.create(rtype, namespace, created, dataclasses.replace(opts, applied=True))
                raise not_found(rtype.plural, rtype.group, name)
            if subresource == "scale":
                scale = self._patched(content_type, scale_of(live), body, opts)
                return self._write_scale(rtype, live, scale, opts)
            patched = self._patched(content_type, self.as_version(rtype, live), body, opts)
            return self._store_write(
                rtype, live, patched, subresource, dataclasses.replace(opts, applied=applying)
            )

    @staticmethod
    def _patched(content_type: str, target: Obj, body: Any, opts: WriteOptions) -> Obj:
        if content_type == patching.APPLY:
            return managed_fields.server_side_apply(target, body, opts.manager, opts.force)
        return patching.apply_patch(content_type, target, body)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, options: dict[str, Any]) -> Obj:
        with self.store.lock:
            live = self._live(rtype, namespace, name)
            pre = options.get("preconditions") or {}
            if pre.get("resourceVersion") not in (None, live["metadata"]["resourceVersion"]):
                raise stale(rtype.plural, rtype.group, name)
            if pre.get("uid") not in (None, live["metadata"]["uid"]):
                raise stale(rtype.plural, rtype.group, name)
            if options.get("dryRun"):
                return self.as_version(rtype, live)
            policy = options.get("propagationPolicy") or (
                "Orphan" if options.get("orphanDependents") else "Background"
            )
            return self.as_version(rtype, self.lifecycle.delete(rtype, live, policy))

    def delete_collection(
        self,
        rtype: ResourceType,
        namespace: str | None,
        labels: str | None,
        fields: str | None,
        options: dict[str, Any],
    ) -> Obj:
        listed = self.list(rtype, namespace, labels, fields)
        for item in listed["items"]:
            meta = item["metadata"]
            self.delete(rtype, meta.get("namespace"), meta["name"], options)
        return listed

    # --- internals ---------------------------------------------------------------------------------

    def _live(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        live = self.store.get(rtype.key, namespace if rtype.namespaced else None, name)
        if live is None:
            raise not_found(rtype.plural, rtype.group, name)
        return live

    def _admit(self, rtype: ResourceType, obj: Obj, strict: bool, live: Obj | None = None) -> None:
        """Prune (or, strict, reject) unknown fields, default, then validate: schema and values."""
        if rtype.crd is None:
            dropped, causes = builtin_schema.drop_unknown_fields(obj), []
        else:
            dropped, causes = schema.admit(obj, rtype.schema)
        causes += validation.causes(rtype.key, obj, live, builtin=rtype.crd is None)
        name = obj["metadata"].get("name", "")
        if dropped and strict:
            fields = ", ".join(f'unknown field "{path}"' for path in dropped)
            raise ApiError(
                400,
                "BadRequest",
                f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: strict decoding error: {fields}',
            )
        if causes:
            raise invalid(rtype.kind, rtype.group, name, causes)

    def _store_write(
        self, rtype: ResourceType, live: Obj, body: Obj, subresource: str | None, opts: WriteOptions
    ) -> Obj:
        if subresource not in (None, "status") or (subresource and subresource not in rtype.subresources):
            raise method_not_allowed()
        self._check_preconditions(rtype, live, body)
        if subresource == "status":
            new = objects.only_status_from(live, body)
        elif "status" in rtype.subresources:
            new = objects.with_status_of(live, body)
        else:
            new = body
        new = objects.carry_system_fields(rtype, live, new)
        objects.apply_builtin_defaults(rtype, new)
        self._admit(rtype, new, opts.strict, live)
        self._check_finalizers(rtype, live, new)
        if not opts.applied:
            managed_fields.record_update(live, new, opts.manager)
        if objects.unchanged(live, new):
            return self.as_version(rtype, live)
        if opts.dry_run:
            return self.as_version(rtype, new)
        stored = self.store.put(rtype.key, new, "MODIFIED")
        self.lifecycle.after_write(rtype, stored)
        return self.as_version(rtype, stored)

    @staticmethod
    def _check_preconditions(rtype: ResourceType, live: Obj, body: Obj) -> None:
        """A resourceVersion or uid in the body is a precondition on the live object."""
        meta, name = body.get("metadata") or {}, live["metadata"]["name"]
        if meta.get("resourceVersion") not in (None, "", live["metadata"]["resourceVersion"]):
            raise stale(rtype.plural, rtype.group, name)
        if meta.get("uid") not in (None, "", live["metadata"]["uid"]):
            why = f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {live['metadata']['uid']}"
            raise conflict(rtype.plural, rtype.group, name, why)

    @staticmethod
    def _check_finalizers(rtype: ResourceType, live: Obj, new: Obj) -> None:
        """An object being deleted can lose finalizers but gain none."""
        if not live["metadata"].get("deletionTimestamp"):
            return
        added = [
            f
            for f in new["metadata"].get("finalizers") or []
            if f not in (live["metadata"].get("finalizers") or [])
        ]
        if added:
            cause = {
                "reason": "FieldValueForbidden",
                "field": "metadata.finalizers",
                "message": f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {json.dumps(added)}",
            }
            raise invalid(rtype.kind, rtype.group, live["metadata"]["name"], [cause])

    def _write_scale(self, rtype: ResourceType, live: Obj, scale: Obj, opts: WriteOptions) -> Obj:
        if "scale" not in rtype.subresources:
            raise method_not_allowed()
        new = copy.deepcopy(live)
        new["spec"]["replicas"] = int(scale.get("spec", {}).get("replicas", 0))
        new["metadata"]["resourceVersion"] = (
            scale.get("metadata", {}).get("resourceVersion") or live["metadata"]["resourceVersion"]
        )
        written = self._store_write(rtype, live, new, None, opts)
        return scale_of(written)
