"""Unknown fields in built-in kinds, found with Kubernetes' own schemas (kubernetes-validate's strict
JSON schemas, Kubernetes 1.37), as the API server's decoder finds them.

The real server drops unknown fields of built-in kinds (fieldValidation=Ignore or Warn, the default)
or rejects the request (Strict, which kubectl and Helm send). Only unknown fields are judged here;
other schema errors are left alone, so a quirk of the JSON schemas cannot reject a valid object.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
from kubernetes_validate import utils
from referencing import Registry, Resource

VERSION = "1.37.0"


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Validator | None:
    schema_dir = f"v{VERSION}-local-strict"
    file_group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{file_group}.json", VERSION
        )
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unknown(error: jsonschema.ValidationError) -> list[tuple[list[Any], str]]:
    found = []
    for sub in [error, *(error.context or [])]:
        if sub.validator == "additionalProperties" and isinstance(sub.instance, dict):
            declared = set((sub.schema.get("properties") or {}).keys())
            found += [(list(sub.absolute_path), name) for name in sub.instance if name not in declared]
    return found


def drop_unknown_fields(obj: dict[str, Any]) -> list[str]:
    """Remove fields the kind's schema does not declare from obj; return their paths."""
    validator = _validator(obj.get("apiVersion", ""), obj.get("kind", ""))
    if validator is None:
        return []
    unknown = sorted(
        {(tuple(at), name) for e in validator.iter_errors(obj) for at, name in _unknown(e)}, reverse=True
    )
    paths = []
    for at, name in unknown:
        parent: Any = obj
        for part in at:
            parent = parent[part]
        del parent[name]
        paths.append(_path([*at, name]))
    return sorted(paths)
