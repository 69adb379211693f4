"""Object metadata rules: identity on create, what a write may change, generation, built-in defaults."""

from __future__ import annotations

import copy
import datetime
import random
import string
import uuid
from typing import Any

from .errors import bad_request, invalid
from .resources import ResourceType

Obj = dict[str, Any]
# Set by the server only; a client's values are ignored on create and kept from the live object on write.
SYSTEM_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec_part(obj: Obj) -> Obj:
    """What `metadata.generation` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def new_object(rtype: ResourceType, namespace: str | None, body: Obj) -> Obj:
    """A created object: name (or generateName), namespace from the URL, uid, timestamps, generation 1."""
    obj = copy.deepcopy(body)
    meta = obj.setdefault("metadata", {})
    if not meta.get("name"):
        if not meta.get("generateName"):
            causes = [
                {
                    "reason": "FieldValueRequired",
                    "field": "metadata.name",
                    "message": "Required value: name or generateName is required",
                }
            ]
            raise invalid(rtype.kind, rtype.group, "", causes)
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        meta["name"] = meta["generateName"] + suffix
    if rtype.namespaced:
        if meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    for field in (*SYSTEM_FIELDS, "resourceVersion"):
        meta.pop(field, None)
    meta |= {"uid": str(uuid.uuid4()), "creationTimestamp": now(), "generation": 1}
    obj["apiVersion"], obj["kind"] = rtype.group_version, rtype.kind
    if "status" in rtype.subresources:
        obj.pop("status", None)  # status is written through /status only
    apply_builtin_defaults(rtype, obj)
    return obj


def carry_system_fields(rtype: ResourceType, live: Obj, new: Obj) -> Obj:
    """A written object keeps identity and server-set fields of the live one; generation follows spec."""
    new = copy.deepcopy(new)
    meta = new.setdefault("metadata", {})
    old_meta = live["metadata"]
    for field in ("name", "namespace"):
        if meta.get(field, old_meta.get(field)) != old_meta.get(field):
            raise bad_request(
                f"the {field} of the object ({meta.get(field)}) does not match the {field} on the URL ({old_meta.get(field)})"
            )
    for field in (*SYSTEM_FIELDS, "namespace", "name"):
        if field in old_meta:
            meta[field] = old_meta[field]
        else:
            meta.pop(field, None)
    new["apiVersion"], new["kind"] = rtype.group_version, rtype.kind
    if spec_part(new) != spec_part(live):
        meta["generation"] = old_meta.get("generation", 1) + 1
    return new


def with_status_of(source: Obj, target: Obj) -> Obj:
    """target with source's status (or without one): the main resource ignores status changes."""
    result = copy.deepcopy(target)
    if "status" in source:
        result["status"] = copy.deepcopy(source["status"])
    else:
        result.pop("status", None)
    return result


def only_status_from(live: Obj, written: Obj) -> Obj:
    """/status writes change the status stanza only."""
    return with_status_of(written, live)


def unchanged(live: Obj, new: Obj) -> bool:
    """A write that changes nothing is not stored: no new resourceVersion, no watch event."""

    def strip(obj: Obj) -> Obj:
        meta = {
            k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")
        }
        return {**obj, "metadata": meta}

    return strip(live) == strip(new)


# --- a few defaults the real API server applies to built-in kinds (those clients commonly read back) ---


def _default_pod_template(template: Obj) -> None:
    spec = template.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        tag = container.get("image", "").rpartition(":")[2]
        container.setdefault(
            "imagePullPolicy", "Always" if tag in ("", "latest") or "/" in tag else "IfNotPresent"
        )
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")


def _default_deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault(
        "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    )
    _default_pod_template(spec.setdefault("template", {}))


def _default_statefulset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    _default_pod_template(spec.setdefault("template", {}))


def _default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("clusterIP") != "None":
        spec.setdefault("clusterIP", f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}")
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))


def _default_namespace(obj: Obj) -> None:
    obj["status"] = {"phase": "Active"}
    obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"][
        "name"
    ]


_DEFAULTS = {
    ("apps", "deployments"): _default_deployment,
    ("apps", "statefulsets"): _default_statefulset,
    ("", "services"): _default_service,
    ("", "namespaces"): _default_namespace,
}


def apply_builtin_defaults(rtype: ResourceType, obj: Obj) -> None:
    if rtype.crd is None and (default := _DEFAULTS.get(rtype.key)):
        default(obj)
