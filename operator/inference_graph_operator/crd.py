"""The InferenceGraph CustomResourceDefinition, generated from the spec model.

The pydantic model in ``inference_graph.core.spec`` is the single source of truth;
:func:`structural_schema` turns its JSON schema into the structural OpenAPI v3
schema Kubernetes requires (no ``$ref``, no ``anyOf``, ``nullable`` instead of
``null`` types, ``x-kubernetes-preserve-unknown-fields`` for free-form maps,
``exclusiveMinimum`` as a boolean). ``crds/inferencegraph.yaml`` is this module's
output (``python -m inference_graph_operator.crd > crds/inferencegraph.yaml``);
a test fails when the committed file and the model drift apart.

:func:`json_schema` goes the other way (structural → JSON Schema with the API
server's semantics), so tests and tools can check a manifest against the CRD
exactly as ``kubectl apply`` would, without an API server.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from inference_graph.core.spec import API_GROUP, KIND, GraphSpec, Role

PLURAL = "inferencegraphs"
SINGULAR = "inferencegraph"
VERSION = "v1alpha1"
CRD_NAME = f"{PLURAL}.{API_GROUP}"
SHORT_NAMES = ["ig"]
CATEGORIES = ["dynamo"]

# One per autoscalable role of a graph: the per-role scale target (`kubectl scale`, an HPA, the planner).
SCALER_KIND = "InferenceGraphScaler"
SCALER_PLURAL = "inferencegraphscalers"
SCALER_SINGULAR = "inferencegraphscaler"
SCALER_CRD_NAME = f"{SCALER_PLURAL}.{API_GROUP}"
SCALER_SHORT_NAMES = ["igs"]
SCALED_ROLES = (Role.DECODE, Role.PREFILL)  # the worker roles: each gets a scaler

# Keys of a pydantic JSON schema that carry no meaning for Kubernetes.
_DROP = {"title", "$defs", "examples"}
# Keys a structural schema node may carry, as written by pydantic (others are dropped).
_KEEP = {
    "x-kubernetes-validations",  # CEL rules from the models (spec._cel)
    "type",
    "description",
    "default",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "required",
}


class SchemaError(ValueError):
    """The model's JSON schema uses a construct a structural schema cannot express."""


def structural_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema (``model_json_schema(by_alias=True)``) as a structural schema."""
    defs = schema.get("$defs", {})
    return _convert(schema, defs, path="")


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = dict(node)
    nullable = False
    if "$ref" in node:  # inline; siblings (description, default) win over the target's
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node or "oneOf" in node:
        options = node.pop("anyOf", None) or node.pop("oneOf")
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) != 1:
            raise SchemaError(f"{path or '<root>'}: unions other than Optional[X] are not structural")
        nullable = len(non_null) < len(options)
        inner = _convert(non_null[0], defs, path)
        node = {**inner, **{k: v for k, v in node.items() if k not in _DROP}}
        if nullable:
            node["nullable"] = True
        if node.get("default", ...) is None:
            del node["default"]  # "absent" already means None; the API server prunes null defaults
        return _ordered(node)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _KEEP:
            out[key] = copy.deepcopy(value)
    if "exclusiveMinimum" in node:  # JSON Schema 2020 number -> OpenAPI 3.0 boolean
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if out.get("default", ...) is None:
        del out["default"]
    if "const" in node:
        out["enum"] = [node["const"]]

    kind = node.get("type")
    if "enum" in node and kind is None:
        out["type"] = "string"
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}".lstrip("."))
                for name, sub in node["properties"].items()
            }
            # additionalProperties: false has no structural form; unknown fields are
            # pruned by the API server and rejected by kubectl's strict field validation.
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, defs, f"{path}.*".lstrip("."))
        elif extra is True or ("properties" not in node and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), defs, f"{path}[]")
    elif kind is None and "enum" not in node:
        if node:  # an untyped node (Any) keeps whatever it is given
            raise SchemaError(f"{path or '<root>'}: untyped schema {node}")
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """type and description first, so the generated YAML reads well."""
    head: dict[str, Any] = {k: node[k] for k in ("type", "description") if k in node}
    return {**head, **{k: v for k, v in node.items() if k not in head}}


# ---------------------------------------------------------------- status


def _status_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    role_status = {
        "type": "object",
        "description": "One role's Deployment.",
        "properties": {
            "desired": {**count, "description": "Replicas the spec asks for."},
            "replicas": {**count, "description": "Pods that exist (Deployment status.replicas)."},
            "ready": {**count, "description": "Pods that pass their readiness probe."},
        },
    }
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "description": "Ready, Progressing or Degraded."},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "description": "CamelCase cause, for machines."},
            "message": {"type": "string", "description": "Explanation for humans; names the field at fault."},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "type": "object",
        "description": "Observed state, written by the operator only.",
        "properties": {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Progressing", "Ready", "Degraded", "Failed"],
                "description": "Summary of the conditions.",
            },
            "observedGeneration": {
                "type": "integer",
                "description": "metadata.generation of the spec this status describes.",
            },
            "ready": {
                "type": "string",
                "description": "Ready pods / desired pods over all roles, e.g. 3/3 (printer column).",
            },
            "services": {
                "type": "object",
                "description": "Per role (" + ", ".join(r.value for r in Role) + "): replica counts.",
                "additionalProperties": role_status,
            },
            "conditions": {
                "type": "array",
                "description": "Ready, Progressing and Degraded, with reasons.",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "endpoint": {
                "type": "string",
                "description": "In-cluster URL of the frontend's OpenAI-compatible API.",
            },
        },
    }


def openapi_schema() -> dict[str, Any]:
    """The whole object's schema: apiVersion/kind/metadata, the generated spec, the status."""
    spec = structural_schema(GraphSpec.model_json_schema(by_alias=True))
    spec["description"] = (
        "Desired state of a disaggregated LLM serving graph: the model, the engine, routing, "
        "and one entry per role under services."
    )
    spec = _ordered(spec)
    return {
        "type": "object",
        "description": "An LLM serving graph: one Deployment per role, reconciled by the inference-graph operator.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": _status_schema(),
        },
    }


def _column(
    name: str, path: str, description: str, kind: str = "string", priority: int = 0
) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def custom_resource_definition() -> dict[str, Any]:
    """The CRD manifest (apiextensions.k8s.io/v1)."""
    role_columns = [
        _column(
            role.value.capitalize(),
            f".status.services.{role.value}.ready",
            f"Ready {role.value} pods",
            "integer",
            priority=1,
        )
        for role in (Role.FRONTEND, Role.PROCESSOR, Role.ROUTER, Role.DECODE, Role.PREFILL)
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "dynamo", "app.kubernetes.io/name": "inference-graph"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _column("Phase", ".status.phase", "Summary of the conditions"),
                        _column("Ready", ".status.ready", "Ready pods / desired pods, all roles"),
                        *role_columns,
                        _column("Endpoint", ".status.endpoint", "Frontend URL inside the cluster"),
                        _column("Age", ".metadata.creationTimestamp", "Time since creation", "date"),
                    ],
                }
            ],
        },
    }


def scaler_custom_resource_definition() -> dict[str, Any]:
    """The InferenceGraphScaler CRD: one small object per worker role of a graph, whose ``scale``
    subresource is that role's scale (a CRD has one scale subresource, a graph several roles).
    The operator creates it (owned by the graph) and copies its ``spec.replicas`` to the role's
    Deployment; ``kubectl scale``, an HPA or the planner's decisions write it."""
    count = {"type": "integer", "minimum": 0, "format": "int32"}
    immutable = [{"rule": "self == oldSelf", "message": "is immutable"}]
    schema = {
        "type": "object",
        "description": "The scale of one role of an InferenceGraph (kubectl scale and HPAs target it).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "description": "Written by the operator at creation; replicas by whoever scales the role.",
                "required": ["graph", "role", "replicas"],
                "properties": {
                    "graph": {
                        "type": "string",
                        "description": "The InferenceGraph (same namespace).",
                        "x-kubernetes-validations": immutable,
                    },
                    "role": {
                        "type": "string",
                        "enum": [r.value for r in SCALED_ROLES],
                        "description": "The role this object scales.",
                        "x-kubernetes-validations": immutable,
                    },
                    "replicas": {
                        **count,
                        "description": "Desired replicas of the role; the operator copies it to the role's "
                        "Deployment (within minReplicas..maxReplicas when the role autoscales).",
                    },
                },
            },
            "status": {
                "type": "object",
                "description": "The role's Deployment as observed by the operator.",
                "properties": {
                    "replicas": {
                        **count,
                        "description": "Pods of the role (the Deployment's status.replicas).",
                    },
                    "readyReplicas": {**count, "description": "Pods that pass their readiness probe."},
                    "selector": {
                        "type": "string",
                        "description": "Label selector of the role's pods (for an HPA's pod metrics).",
                    },
                },
            },
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": SCALER_CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "dynamo", "app.kubernetes.io/name": "inference-graph"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": SCALER_KIND,
                "listKind": f"{SCALER_KIND}List",
                "plural": SCALER_PLURAL,
                "singular": SCALER_SINGULAR,
                "shortNames": SCALER_SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        _column("Graph", ".spec.graph", "The InferenceGraph"),
                        _column("Role", ".spec.role", "The role it scales"),
                        _column("Desired", ".spec.replicas", "Desired replicas", "integer"),
                        _column("Current", ".status.replicas", "Pods of the role", "integer"),
                        _column("Ready", ".status.readyReplicas", "Ready pods of the role", "integer"),
                        _column("Age", ".metadata.creationTimestamp", "Time since creation", "date"),
                    ],
                }
            ],
        },
    }


def render_yaml(kind: str = "graph") -> str:
    """The graph's CRD (``kind="graph"``) or the scaler's (``"scaler"``) as a YAML file."""
    command = "python -m inference_graph_operator.crd" + (" scaler" if kind == "scaler" else "")
    test = "test_ssa.py" if kind == "scaler" else "test_crd.py"
    header = (
        f"# Generated by `{command}` from inference_graph.core.spec.\n"
        f"# Do not edit: change the model and regenerate (tests/kube/{test} checks for drift).\n"
    )
    crd = scaler_custom_resource_definition() if kind == "scaler" else custom_resource_definition()
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


# ---------------------------------------------------------------- back to JSON Schema


def json_schema(structural: dict[str, Any], strict_fields: bool = True) -> dict[str, Any]:
    """A structural schema as JSON Schema (draft 4 style, as ``jsonschema`` expects):
    ``nullable`` becomes a ``null`` type, boolean ``exclusiveMinimum`` a number, and
    with ``strict_fields`` objects with ``properties`` reject unknown fields, the way
    ``kubectl apply`` (strict field validation) does."""
    node = {k: v for k, v in structural.items() if not k.startswith("x-kubernetes-")}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: json_schema(sub, strict_fields) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = json_schema(value, strict_fields)
        elif key in ("nullable", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        else:
            out[key] = value
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if strict_fields and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def validate(manifest: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Errors ``kubectl apply`` would report for ``manifest``, each ``<field path>: <message>``."""
    import jsonschema

    crd = crd or custom_resource_definition()
    schema = json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # the API server owns metadata's schema
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "<root>"


def main(argv: list[str] | None = None) -> None:
    """``python -m inference_graph_operator.crd [graph|scaler]``: that CRD on stdout."""
    args = sys.argv[1:] if argv is None else argv
    kind = args[0] if args else "graph"
    if kind not in ("graph", "scaler"):
        sys.exit(f"usage: python -m inference_graph_operator.crd [graph|scaler] (got {kind!r})")
    sys.stdout.write(render_yaml(kind))


if __name__ == "__main__":
    main()
