"""Request bodies in Kubernetes' protobuf encoding, for the kinds clients send that way.

Helm's release storage writes its Secrets with `Content-Type: application/vnd.kubernetes.protobuf`
(the typed clientset's default). The envelope is `k8s\\x00` + runtime.Unknown{typeMeta, raw}; `raw`
is the object's own message. Only Secret, ConfigMap and Namespace are decoded (kubectl's `create secret|configmap|namespace` generators send
protobuf too) (field numbers from
k8s.io/api/core/v1/generated.proto); responses are JSON, which those clients also accept.
"""

from __future__ import annotations

import base64
from typing import Any

from .errors import ApiError

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
Fields = list[tuple[int, int | bytes]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> Fields:
    """(field number, value) pairs of one message; varints as int, length-delimited as bytes."""
    out: Fields = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ApiError(400, "BadRequest", f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _text(value: int | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _map(entries: list[bytes], as_bytes: bool = False) -> dict[str, str]:
    result = {}
    for entry in entries:
        pair = dict(fields(entry))
        value = pair.get(2, b"")
        result[_text(pair.get(1, b""))] = base64.b64encode(value).decode() if as_bytes else _text(value)
    return result


def _owner_reference(data: bytes) -> dict[str, Any]:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion", 6: "controller", 7: "blockOwnerDeletion"}
    ref: dict[str, Any] = {}
    for number, value in fields(data):
        if number in names:
            ref[names[number]] = bool(value) if number in (6, 7) else _text(value)
    return ref


def _object_meta(data: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    grouped: dict[int, list[Any]] = {}
    for number, value in fields(data):
        grouped.setdefault(number, []).append(value)
    for number, key in strings.items():
        if grouped.get(number) and grouped[number][0]:
            meta[key] = _text(grouped[number][0])
    for number, key in ((11, "labels"), (12, "annotations")):
        if grouped.get(number):
            meta[key] = _map(grouped[number])
    if grouped.get(13):
        meta["ownerReferences"] = [_owner_reference(r) for r in grouped[13]]
    if grouped.get(14):
        meta["finalizers"] = [_text(f) for f in grouped[14]]
    return meta


def _secret_or_config_map(kind: str, data: bytes) -> dict[str, Any]:
    grouped: dict[int, list[Any]] = {}
    for number, value in fields(data):
        grouped.setdefault(number, []).append(value)
    obj: dict[str, Any] = {"metadata": _object_meta(grouped[1][0]) if grouped.get(1) else {}}
    if kind == "Secret":
        layout = {2: ("data", True), 5: ("stringData", False)}
        if grouped.get(3):
            obj["type"] = _text(grouped[3][0])
    else:
        layout = {2: ("data", False), 3: ("binaryData", True)}
    for number, (key, binary) in layout.items():
        if grouped.get(number):
            obj[key] = _map(grouped[number], as_bytes=binary)
    if grouped.get(4):
        obj["immutable"] = bool(grouped[4][0])
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body → the JSON-shaped object."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s envelope")
    unknown = dict(fields(body[len(MAGIC) :]))
    type_meta = dict(fields(unknown.get(1, b"")))
    api_version, kind = _text(type_meta.get(1, b"")), _text(type_meta.get(2, b""))
    if kind == "DeleteOptions":
        options = dict(fields(unknown.get(2, b"")))
        return {"propagationPolicy": _text(options[4])} if 4 in options else {}
    raw = unknown.get(2, b"")
    if kind == "Namespace":  # `kubectl create namespace`: metadata is all that matters
        grouped = dict(fields(raw))
        return {"apiVersion": api_version, "kind": kind, "metadata": _object_meta(grouped.get(1, b""))}
    if kind not in ("Secret", "ConfigMap"):
        message = f"the emulator decodes protobuf for Secret, ConfigMap and Namespace only, not {kind}: send JSON (kubectl apply/create -f)"
        raise ApiError(415, "UnsupportedMediaType", message)
    return {"apiVersion": api_version, "kind": kind, **_secret_or_config_map(kind, raw)}
