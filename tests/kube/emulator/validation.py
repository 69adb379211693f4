"""Value validation the real API server applies to object metadata and to the built-in kinds the
project writes: the mistakes an operator or a chart can make that a schema does not catch (names
that are not DNS labels, label values too long, a Deployment selector that does not match its pod
template, a changed selector, unnamed Service ports, containers without image). Messages follow
kube-apiserver's wording.
"""

from __future__ import annotations

import json
import re
from typing import Any

Obj = dict[str, Any]
Cause = dict[str, str]

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
DNS1035_LABEL = r"[a-z]([-a-z0-9]*[a-z0-9])?"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
ENV_NAME = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
CONFIG_KEY = r"[-._a-zA-Z0-9]+"
WORKLOADS = {("apps", "deployments"), ("apps", "statefulsets"), ("apps", "replicasets")}
SUBDOMAIN_RULE = (
    DNS1123_SUBDOMAIN,
    253,
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    f"start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')",
)
# kinds whose names become hostnames: DNS labels, not subdomains
NAME_RULES = {
    ("", "namespaces"): (
        DNS1123_LABEL,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
        f"end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL}')",
    ),
    ("", "services"): (
        DNS1035_LABEL,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
        f"character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_LABEL}')",
    ),
}


def _invalid(field: str, value: Any, detail: str) -> Cause:
    shown = json.dumps(value) if isinstance(value, str) else _go_map(value)
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {shown}: {detail}"}


def _go_map(value: Any) -> str:
    if isinstance(value, dict):
        return "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in value.items()) + "}"
    return json.dumps(value)


def _required(field: str) -> Cause:
    return {"reason": "FieldValueRequired", "field": field, "message": "Required value"}


def _name_causes(key: tuple[str, str], name: str) -> list[Cause]:
    pattern, limit, rule = NAME_RULES.get(key, SUBDOMAIN_RULE)
    causes = []
    if len(name) > limit:
        causes.append(_invalid("metadata.name", name, f"must be no more than {limit} characters"))
    if not re.fullmatch(pattern, name):
        causes.append(_invalid("metadata.name", name, rule))
    return causes


def _label_causes(field: str, labels: dict[str, str]) -> list[Cause]:
    causes = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not re.fullmatch(DNS1123_SUBDOMAIN, prefix))
            or not name
            or len(name) > 63
            or not re.fullmatch(LABEL_VALUE, name)
        ):
            causes.append(
                _invalid(
                    field,
                    key,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
        if not isinstance(value, str) or len(value) > 63:
            causes.append(_invalid(field, value, "must be no more than 63 characters"))
        elif not re.fullmatch(LABEL_VALUE, value):
            causes.append(
                _invalid(
                    field,
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
    return causes


def metadata_causes(key: tuple[str, str], obj: Obj) -> list[Cause]:
    meta = obj.get("metadata", {})
    causes = _name_causes(key, meta.get("name", ""))
    return causes + _label_causes("metadata.labels", meta.get("labels") or {})


def _containers_causes(at: str, pod_spec: Obj) -> list[Cause]:
    causes = []
    containers = pod_spec.get("containers")
    if not containers:
        return [_required(f"{at}.containers")]
    for index, container in enumerate(containers):
        where = f"{at}.containers[{index}]"
        if not re.fullmatch(DNS1123_LABEL, container.get("name", "")):
            causes.append(
                _required(f"{where}.name")
                if not container.get("name")
                else _invalid(
                    f"{where}.name",
                    container["name"],
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
                )
            )
        if not container.get("image"):
            causes.append(_required(f"{where}.image"))
        for e, env in enumerate(container.get("env") or []):
            if not re.fullmatch(ENV_NAME, env.get("name", "")):
                causes.append(
                    _invalid(
                        f"{where}.env[{e}].name",
                        env.get("name", ""),
                        "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
                    )
                )
    return causes


def _workload_causes(obj: Obj, live: Obj | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    if not selector:
        return [_required("spec.selector")]
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    causes = []
    wanted = selector.get("matchLabels") or {}
    if not wanted and not selector.get("matchExpressions"):
        causes.append(_invalid("spec.selector", selector, "empty selector is invalid for deployment"))
    if any(template_labels.get(k) != v for k, v in wanted.items()):
        causes.append(
            _invalid(
                "spec.template.metadata.labels",
                template_labels,
                "`selector` does not match template `labels`",
            )
        )
    if live is not None and (live.get("spec") or {}).get("selector") != selector:
        causes.append(_invalid("spec.selector", selector, "field is immutable"))
    return causes + _containers_causes("spec.template.spec", (spec.get("template") or {}).get("spec") or {})


def _service_causes(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    ports = spec.get("ports") or []
    causes = []
    if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append(_required("spec.ports"))
    for index, port in enumerate(ports):
        if len(ports) > 1 and not port.get("name"):
            causes.append(_required(f"spec.ports[{index}].name"))
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(
                _invalid(f"spec.ports[{index}].port", number, "must be between 1 and 65535, inclusive")
            )
    return causes


def _config_map_causes(obj: Obj) -> list[Cause]:
    keys = [*(obj.get("data") or {}), *(obj.get("binaryData") or {})]
    return [
        _invalid(
            f"data[{k}]", k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        )
        for k in keys
        if not re.fullmatch(CONFIG_KEY, k)
    ]


def causes(key: tuple[str, str], obj: Obj, live: Obj | None, builtin: bool) -> list[Cause]:
    """Every validation failure of obj (live: the stored object on update, for immutable fields)."""
    found = metadata_causes(key, obj)
    if not builtin:
        return found
    if key in WORKLOADS:
        found += _workload_causes(obj, live)
    elif key == ("", "services"):
        found += _service_causes(obj)
    elif key == ("", "configmaps"):
        found += _config_map_causes(obj)
    elif key == ("", "pods"):
        found += _containers_causes("spec", obj.get("spec") or {})
    return found
