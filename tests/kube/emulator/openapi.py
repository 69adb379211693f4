"""/openapi/v3: per group-version documents with what kubectl reads from them.

- Every resource's PATCH operation carries `x-kubernetes-group-version-kind` and a `fieldValidation`
  query parameter. kubectl looks for exactly that to decide the server validates fields itself, so
  `kubectl apply` sends `fieldValidation=Strict` and needs no client-side schema (/openapi/v2).
- CRD-backed kinds get their openAPIV3Schema as a component schema with the GVK extension, which is
  what `kubectl explain` renders. Built-in kinds get no component schema: kubectl then computes
  strategic merge patches from its compiled-in types, exactly as it does when a schema is missing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import Registry, ResourceType

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rtype: ResourceType) -> str:
    reversed_group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{reversed_group}.{rtype.version}.{rtype.kind}"


def _operation(rtype: ResourceType, verb: str, params: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "operationId": f"{verb}{rtype.kind}",
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {
            "group": rtype.group,
            "version": rtype.version,
            "kind": rtype.kind,
        },
        "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}} for p in params],
        "responses": {"200": {"description": "OK"}},
    }


def _paths(rtype: ResourceType) -> dict[str, Any]:
    base = "/" + _gv_path(rtype.group, rtype.version)
    scope = (
        f"{base}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{base}/{rtype.plural}"
    )
    paths = {
        scope: {"get": _operation(rtype, "list"), "post": _operation(rtype, "post", _WRITE_PARAMS)},
        f"{scope}/{{name}}": {
            "get": _operation(rtype, "get"),
            "put": _operation(rtype, "put", _WRITE_PARAMS),
            "patch": _operation(rtype, "patch", _WRITE_PARAMS),
            "delete": _operation(rtype, "delete"),
        },
    }
    for sub in sorted(rtype.subresources):
        paths[f"{scope}/{{name}}/{sub}"] = {
            "get": _operation(rtype, "get"),
            "patch": _operation(rtype, "patch", _WRITE_PARAMS),
        }
    return paths


def _with_meta_ref(schema: dict[str, Any]) -> dict[str, Any]:
    properties = dict(schema.get("properties") or {})
    properties["metadata"] = {
        "description": "Standard object's metadata.",
        "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}],
        "default": {},
    }
    properties.setdefault(
        "apiVersion",
        {
            "type": "string",
            "description": "APIVersion defines the versioned schema of this representation of an object.",
        },
    )
    properties.setdefault(
        "kind",
        {
            "type": "string",
            "description": "Kind is a string value representing the REST resource this object represents.",
        },
    )
    return {**schema, "properties": properties}


def _object_meta() -> dict[str, Any]:
    def text(description: str) -> dict[str, Any]:
        return {"type": "string", "description": description}

    return {
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "properties": {
            "name": text("Name must be unique within a namespace."),
            "namespace": text("Namespace defines the space within which each name must be unique."),
            "labels": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Map of string keys and values for organizing objects.",
            },
            "annotations": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Unstructured key value map stored with a resource.",
            },
            "uid": text("UID is the unique in time and space value for this object."),
            "resourceVersion": text("An opaque value that represents the internal version of this object."),
            "generation": {
                "type": "integer",
                "format": "int64",
                "description": "A sequence number representing a specific generation of the desired state.",
            },
            "finalizers": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Must be empty before the object is deleted from the registry.",
            },
        },
    }


def group_version_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    schemas: dict[str, Any] = {OBJECT_META: _object_meta()}
    paths: dict[str, Any] = {}
    for rtype in types:
        paths |= _paths(rtype)
        if rtype.schema is not None:
            gvk = [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
            schemas[_schema_name(rtype)] = _with_meta_ref(rtype.schema) | {
                "x-kubernetes-group-version-kind": gvk
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (emulated)", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def index(registry: Registry) -> dict[str, Any]:
    """The /openapi/v3 discovery: one document per group-version, with a content hash in the URL."""
    paths = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            document = group_version_document(registry, group, version)
            digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32].upper()
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}
