"""Label selectors (equality- and set-based) and field selectors, as list and watch take them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)\s*$")


def _split_top_level(selector: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` has two requirements."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def _label_requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if match := _EQ.match(text):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _SET.match(text):
        negated, key, op, values = match.groups()
        if op is None:
            return (lambda labels: key not in labels) if negated else (lambda labels: key in labels)
        if negated:
            raise bad_request(f"unable to parse requirement: {text!r}")
        choices = {v.strip() for v in values.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in choices
        return lambda labels: labels.get(key) not in choices
    raise bad_request(f"unable to parse requirement: found '{text}', expected: key, =, ==, !=, in, notin")


def label_selector(selector: str | None) -> Predicate:
    requirements = [_label_requirement(part) for part in _split_top_level(selector or "")]

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return matches


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_selector(selector: str | None) -> Predicate:
    """`metadata.name`, `metadata.namespace` and any other dotted field, with =, == and !=."""
    requirements = []
    for part in _split_top_level(selector or ""):
        match = _EQ.match(part)
        if not match:
            raise bad_request(f"invalid field selector: {part!r}")
        path, op, value = match.groups()
        requirements.append((path, op == "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) != negated for path, negated, value in requirements)

    return matches
