"""Field ownership (metadata.managedFields, FieldsV1) and server-side apply conflicts.

Every write records which fields its manager set: an Update entry per manager for create, update and
non-apply patches (the fields whose value the write changed move to that manager), an Apply entry per
manager for server-side apply (exactly the fields it applied). An apply that would change a field
another manager owns fails with 409 Conflict naming the field and the manager, unless `force=true`,
which takes the field over; this is what Helm 4 (`force=false`) and `kubectl apply --server-side`
meet on a real cluster after someone else changed a field they manage.
"""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

from .errors import ApiError, bad_request
from .patching import merge_key, strategic_merge

Obj = dict[str, Any]
Path = tuple[str, ...]  # ("f:spec", "f:template", ..., 'k:{"name":"web"}', "f:image")


def _list_item_key(field: str, items: list[Any]) -> str | None:
    key = merge_key(field, items)
    if key and all(isinstance(i, dict) and key in i for i in items):
        return key
    return None


def fields_of(value: Obj) -> Obj:
    """FieldsV1 of a configuration: `f:` per map key, `k:` per keyed list element."""
    tree: Obj = {}
    for name, child in value.items():
        if isinstance(child, dict) and child:
            tree[f"f:{name}"] = fields_of(child)
        elif isinstance(child, list) and child and (key := _list_item_key(name, child)):
            tree[f"f:{name}"] = {
                "k:" + json.dumps({key: item[key]}, separators=(",", ":")): {".": {}, **fields_of(item)}
                for item in child
            }
        else:
            tree[f"f:{name}"] = {}
    return tree


def owned_part(obj: Obj) -> Obj:
    """What managers own: everything but identity and server-set metadata (labels and annotations do count)."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = {
        k: v for k, v in (obj.get("metadata") or {}).items() if k in ("labels", "annotations", "finalizers")
    }
    return body | ({"metadata": meta} if meta else {})


def leaves(tree: Obj, prefix: Path = ()) -> set[Path]:
    """The owned leaf fields of a FieldsV1 tree (list elements count through their own fields)."""
    found: set[Path] = set()
    for key, child in tree.items():
        if key == ".":
            continue
        path = (*prefix, key)
        children = {k: v for k, v in child.items() if k != "."}
        found |= leaves(children, path) if children else {path}
    return found


def tree_of(paths: set[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(part, {} if not part.startswith("k:") else {".": {}})
    return tree


_MISSING = object()


def value_at(obj: Any, path: Path) -> Any:
    for part in path:
        kind, _, name = part.partition(":")
        if kind == "f" and isinstance(obj, dict) and name in obj:
            obj = obj[name]
        elif kind == "k" and isinstance(obj, list):
            wanted = json.loads(name)
            obj = next(
                (i for i in obj if isinstance(i, dict) and all(i.get(k) == v for k, v in wanted.items())),
                _MISSING,
            )
        else:
            return _MISSING
        if obj is _MISSING:
            return _MISSING
    return obj


def _entry(manager: str, operation: str, api_version: str, paths: set[Path]) -> Obj:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fieldsType": "FieldsV1",
        "fieldsV1": tree_of(paths),
    }


def _without(entries: list[Obj], taken: set[Path], keep: Obj | None = None) -> list[Obj]:
    """Entries with `taken` fields removed (except from `keep`); entries left owning nothing go."""
    result = []
    for entry in entries:
        if entry is keep:
            result.append(entry)
            continue
        remaining = leaves(entry.get("fieldsV1") or {}) - taken
        if remaining:
            result.append(entry | {"fieldsV1": tree_of(remaining)})
    return result


def record_update(live: Obj | None, new: Obj, manager: str) -> None:
    """After a non-apply write: the fields whose value it changed belong to `manager` (its Update entry);
    fields that no longer exist belong to nobody."""
    entries = list((live or {}).get("metadata", {}).get("managedFields") or [])
    present = leaves(fields_of(owned_part(new)))
    changed = {p for p in present if live is None or value_at(live, p) != value_at(new, p)}
    gone = {p for e in entries for p in leaves(e.get("fieldsV1") or {}) if value_at(new, p) is _MISSING}
    if changed and manager:

        def mine(entry: Obj) -> bool:
            return (entry.get("manager"), entry.get("operation")) == (manager, "Update")

        owned = changed.union(*(leaves(e.get("fieldsV1") or {}) for e in entries if mine(e)))
        others = [e for e in entries if not mine(e)]
        entries = [*_without(others, changed), _entry(manager, "Update", new.get("apiVersion", ""), owned)]
    entries = _without(entries, gone)
    new.setdefault("metadata", {})["managedFields"] = entries
    if not entries:
        del new["metadata"]["managedFields"]


def _format(path: Path) -> str:
    text = ""
    for part in path:
        kind, _, name = part.partition(":")
        text += (
            f".{name}"
            if kind == "f"
            else "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(name).items()) + "]"
        )
    return text


def check_apply(live: Obj, applied: Obj, manager: str, force: bool) -> list[Obj]:
    """Entries once `manager` applies `applied` to `live`: 409 on fields others own with other values,
    or with force, those fields taken over. The manager's Apply entry is written by the caller."""
    entries = list(live.get("metadata", {}).get("managedFields") or [])
    wanted = leaves(fields_of(owned_part(applied)))
    clashes: dict[Path, list[str]] = {}
    for entry in entries:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            continue
        for path in leaves(entry.get("fieldsV1") or {}) & wanted:
            if value_at(live, path) != value_at(applied, path):
                clashes.setdefault(path, []).append(entry["manager"])
    if clashes and not force:
        raise _conflict(clashes, live.get("apiVersion", ""))
    return _without(entries, set(clashes))


def _conflict(clashes: dict[Path, list[str]], api_version: str) -> ApiError:
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{who}" using {api_version}',
            "field": _format(path),
        }
        for path, managers in sorted(clashes.items())
        for who in managers
    ]
    count = len(causes)
    if count == 1:
        listed = f"{causes[0]['message']}: {causes[0]['field']}"
    else:
        listed = "conflicts with " + "\n".join(
            f"{c['message'].removeprefix('conflict with ')}:\n- {c['field']}" for c in causes
        )
    message = f"Apply failed with {count} conflict{'s' if count > 1 else ''}: {listed}"
    return ApiError(409, "Conflict", message, {"causes": causes})


def _remove_unapplied(obj: Any, old: Obj, new: Obj) -> None:
    """Delete from obj what `old` owned and `new` no longer does."""
    for path, old_child in old.items():
        if path == ".":
            continue
        kind, _, name = path.partition(":")
        if isinstance(obj, dict) and kind == "f":
            if path not in new:
                obj.pop(name, None)
            elif old_child and name in obj:
                _remove_unapplied(obj[name], old_child, new[path])
        elif isinstance(obj, list) and kind == "k":
            wanted = json.loads(name)
            for item in [
                i for i in obj if isinstance(i, dict) and all(i.get(k) == v for k, v in wanted.items())
            ]:
                if path not in new:
                    obj.remove(item)
                else:
                    _remove_unapplied(item, old_child, new[path])


def server_side_apply(live: Obj | None, applied: Obj, manager: str, force: bool = False) -> Obj:
    """The object after `manager` applies `applied` to `live` (None: it does not exist yet): conflicts
    checked, fields this manager stopped applying removed, the applied configuration merged in."""
    if not manager:
        raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
    entries = check_apply(live, applied, manager, force) if live is not None else []
    mine = next((e for e in entries if (e.get("manager"), e.get("operation")) == (manager, "Apply")), None)
    new_fields = fields_of(owned_part(applied))
    result = copy.deepcopy(live) if live is not None else {}
    if mine is not None:
        _remove_unapplied(result, mine.get("fieldsV1", {}), new_fields)
    result = strategic_merge(result, applied)
    entry = _entry(manager, "Apply", applied.get("apiVersion", ""), leaves(new_fields))
    result.setdefault("metadata", {})["managedFields"] = [*(e for e in entries if e is not mine), entry]
    return result
