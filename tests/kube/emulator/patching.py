"""PATCH bodies: JSON merge patch, JSON patch and strategic merge patch (server-side apply, which
builds on strategic merge, is in managed_fields).

Strategic merge uses the merge keys of the lists the project's kinds carry (containers, env, ports,
volumes...); other lists are replaced, as with a JSON merge patch.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from .errors import ApiError, unsupported_media_type

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC, APPLY)

PRIMITIVE = ""  # a list of scalars merged as a set (metadata.finalizers)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "finalizers": PRIMITIVE,
}


def merge_key(field: str, items: list[Any]) -> str | None:
    """The merge key of a list field, or None when the list is replaced whole."""
    if field == "ports":  # container ports merge on containerPort, service ports on port
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        return jsonpatch.apply_patch(target, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise ApiError(
            422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
        ) from exc


def _merge_list(field: str, current: list[Any], patch: list[Any]) -> list[Any]:
    key = merge_key(field, current + patch)
    if key is None:
        return [strategic_merge(None, item) for item in patch]
    if key == PRIMITIVE:
        return current + [item for item in patch if item not in current]
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            result.append(copy.deepcopy(item))
            continue
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge(None, item))
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge: lists with a merge key merge element-wise; `$patch`, `$retainKeys`,
    `$deleteFromPrimitiveList/…` directives are honoured and `$setElementOrder/…` is ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = [
                strategic_merge(None, v) for v in value if not (isinstance(v, dict) and v.get("$patch"))
            ]
        else:
            result[key] = strategic_merge(result.get(key), value)
    if "$retainKeys" in patch:
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


def apply_patch(content_type: str, live: dict[str, Any], body: Any) -> dict[str, Any]:
    """Dispatch on the PATCH Content-Type (server-side apply is managed_fields.server_side_apply)."""
    if content_type == MERGE_PATCH:
        return merge_patch(live, body)
    if content_type == JSON_PATCH:
        return json_patch(live, body)
    if content_type == STRATEGIC:
        return strategic_merge(live, body)
    raise unsupported_media_type(", ".join(PATCH_TYPES))
