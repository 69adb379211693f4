"""Custom objects against their CRD's openAPIV3Schema: pruning, structural defaulting, validation.

The order is the API server's: prune unknown fields (reported when the client asks for
fieldValidation=Strict, as kubectl does), apply `default`s, then validate. Messages and field paths are
worded like kube-apiserver's, e.g. `spec.services.decode.replicas: Invalid value: -1:
spec.services.decode.replicas in body should be greater than or equal to 0`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema

Schema = dict[str, Any]
_DROPPED = {"nullable", "format", "default", "description", "example", "externalDocs"}


def to_jsonschema(schema: Schema) -> Schema:
    """Kubernetes' OpenAPI v3 dialect → JSON Schema draft 4 (boolean exclusiveMinimum, nullable...)."""
    out: Schema = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(child) for child in value]
        elif not key.startswith("x-kubernetes-") and key not in _DROPPED:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def _path(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def prune(obj: Any, schema: Schema, at: list[str | int], dropped: list[str]) -> None:
    """Remove fields the schema does not declare (unless x-kubernetes-preserve-unknown-fields)."""
    if isinstance(obj, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in obj.items():
                prune(value, extra, [*at, name], dropped)
            return
        for name in list(obj):
            if properties is not None and name in properties:
                prune(obj[name], properties[name], [*at, name], dropped)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
                dropped.append(_path([*at, name]))
                del obj[name]
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            prune(item, schema["items"], [*at, index], dropped)


def apply_defaults(obj: Any, schema: Schema) -> None:
    """Structural defaulting: a missing property with a `default` gets it; recurse into the result."""
    if isinstance(obj, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name not in obj and "default" in child:
                obj[name] = copy.deepcopy(child["default"])
            if name in obj:
                apply_defaults(obj[name], child)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for value in obj.values():
                apply_defaults(value, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _cause(error: jsonschema.ValidationError) -> dict[str, str]:
    """One jsonschema error → a Status cause with kube-apiserver's wording."""
    field = _path(list(error.absolute_path))
    where, value, bound = field or "<root>", error.instance, error.validator_value
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return {
            "reason": "FieldValueRequired",
            "field": _path([*error.absolute_path, missing]),
            "message": "Required value",
        }
    if error.validator == "enum":
        supported = ", ".join(_value(v) for v in bound if v is not None)
        message = f"Unsupported value: {_value(value)}: supported values: {supported}"
        return {"reason": "FieldValueNotSupported", "field": field, "message": message}
    wording = {
        "minimum": f"should be greater than {'' if error.schema.get('exclusiveMinimum') else 'or equal to '}{bound}",
        "maximum": f"should be less than {'' if error.schema.get('exclusiveMaximum') else 'or equal to '}{bound}",
        "pattern": f"should match '{bound}'",
        "minLength": f"should be at least {bound} chars long",
        "maxLength": f"should be at most {bound} chars long",
        "minItems": f"should have at least {bound} items",
        "maxItems": f"should have at most {bound} items",
        "type": f"must be of type {bound}",
    }.get(str(error.validator), error.message)
    message = f"Invalid value: {_value(value)}: {where} in body {wording}"
    return {"reason": "FieldValueInvalid", "field": field, "message": message}


def validate(obj: dict[str, Any], schema: Schema) -> list[dict[str, str]]:
    """Status causes for every schema violation (metadata is the API server's business, not the CRD's)."""
    body = {k: v for k, v in obj.items() if k != "metadata"}
    checked = to_jsonschema(
        {
            **schema,
            "properties": {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"},
        }
    )
    validator = jsonschema.Draft4Validator(checked)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    return [_cause(error) for error in errors]


def admit(obj: dict[str, Any], schema: Schema | None) -> tuple[list[str], list[dict[str, str]]]:
    """Prune and default obj in place; return (pruned field paths, validation causes)."""
    if schema is None:
        return [], []
    dropped: list[str] = []
    for name in list(obj):
        if name not in ("apiVersion", "kind", "metadata"):
            child = (schema.get("properties") or {}).get(name)
            if child is None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                dropped.append(name)
                del obj[name]
            elif child is not None:
                prune(obj[name], child, [name], dropped)
    apply_defaults(
        obj,
        {
            **schema,
            "properties": {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"},
        },
    )
    return dropped, validate(obj, schema)
