"""`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`: server-side printing for `kubectl get`.

CRD-backed kinds print their additionalPrinterColumns (JSONPath); built-in kinds print Name and Age
plus a few kind-specific columns. Rows carry the object (or its metadata) as kubectl's printer needs.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]
NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
AGE = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "description": "CreationTimestamp",
}

_BUILTIN_COLUMNS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("apps", "deployments"): [
        {"name": "Ready", "type": "string", "jsonPath": "{.status.readyReplicas}/{.spec.replicas}"},
        {"name": "Up-to-date", "type": "integer", "jsonPath": ".status.updatedReplicas"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.availableReplicas"},
    ],
    ("", "services"): [
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Cluster-IP", "type": "string", "jsonPath": ".spec.clusterIP"},
    ],
    ("", "namespaces"): [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}],
    ("", "configmaps"): [{"name": "Data", "type": "integer", "jsonPath": "#data"}],
}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: `.a.b`, `.a[0].b`, `.a['x.y']`."""
    value = obj
    for part in re.findall(r"\.([\w-]+)|\[(\d+)\]|\['([^']+)'\]", path):
        name, index, quoted = part
        if index:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        else:
            value = value.get(name or quoted) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def _age(timestamp: str) -> str:
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(obj: Obj, column: dict[str, Any]) -> Any:
    path = column["jsonPath"]
    if path.startswith("#"):  # count of a map's entries
        return len(obj.get(path[1:]) or {})
    if path.startswith("{"):  # a template of several paths, e.g. "ready/desired"
        return re.sub(r"\{([^}]*)\}", lambda m: str(json_path(obj, m.group(1)) or 0), path)
    value = json_path(obj, path)
    if value is None:
        return None
    if column.get("type") == "date" and isinstance(value, str):
        return _age(value)
    return value


def columns_of(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.crd is not None:
        return rtype.printer_columns or [AGE]
    return [*_BUILTIN_COLUMNS.get(rtype.key, []), AGE]


def _column_definition(column: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": column["name"],
        "type": column.get("type", "string"),
        "format": column.get("format", ""),
        "description": column.get("description", ""),
        "priority": column.get("priority", 0),
    }


def table(rtype: ResourceType, items: list[Obj], list_meta: Obj, include: str) -> Obj:
    """A meta.k8s.io/v1 Table; `include` is the includeObject parameter (None, Metadata, Object)."""
    columns = columns_of(rtype)
    rows = []
    for obj in items:
        row: Obj = {"cells": [obj["metadata"]["name"], *(_cell(obj, c) for c in columns)]}
        if include != "None":
            if include == "Metadata":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            else:
                row["object"] = {"apiVersion": rtype.group_version, "kind": rtype.kind, **obj}
        rows.append(row)
    definitions = [NAME, *(_column_definition(c) for c in columns)]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    }
