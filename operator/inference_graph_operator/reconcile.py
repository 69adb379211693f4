"""The operator's decisions as pure functions: no API calls, no kopf.

One reconcile pass is ``desired_children`` (the graph rendered, or the spec error
that stops it) → ``plan`` (desired vs. the children observed in the cluster →
create / patch / delete actions) → ``graph_status`` (from the children as they are
after the actions). ``handlers`` does the I/O around these; the tests drive them with
plain dicts.

Rules:

- Only children whose controller ownerReference is this graph (by uid) are ours: an
  object with a child's name that belongs to something else is never patched or
  deleted (it is reported as a ``ChildConflict``).
- Drift is "the desired object is not a subset of the observed one": fields the API
  server or other controllers add (defaults, status, annotations) are not drift, a
  field we render that differs or is missing is. Lists must match item by item, so
  an env var added by hand is drift too. A patch sends the whole desired object as a
  JSON merge patch, which replaces lists wholesale and so restores them exactly.
- Replica counts come from :func:`decide_replicas` alone (the single writer): a
  ``kubectl scale`` by hand is drift and is undone.
- An invalid spec (:class:`SpecError`) plans nothing: the children stay as they are,
  the status names the field.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inference_graph.core.spec import InferenceGraph, Role, SpecError, parse_graph
from inference_graph.planning import RoleLimits

from .render import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    OperatorDefaults,
    Owner,
    frontend_endpoint,
    render,
)

MANAGED_BY = "inference-graph-operator"
CHILD_KINDS = ("ConfigMap", "Deployment", "Service")


class Verb(enum.StrEnum):
    CREATE = "create"
    PATCH = "patch"
    DELETE = "delete"


@dataclass(frozen=True)
class Action:
    verb: Verb
    obj: dict[str, Any]  # desired object (create/patch) or the observed one (delete)
    why: str  # "missing", "drift at spec.replicas", "no longer desired"

    @property
    def key(self) -> tuple[str, str]:
        return child_key(self.obj)


@dataclass(frozen=True)
class Desired:
    """What a graph should own, or why it cannot be rendered."""

    graph: InferenceGraph | None
    children: list[dict[str, Any]] = field(default_factory=list)
    replicas: dict[Role, int] = field(default_factory=dict)
    error: SpecError | None = None


@dataclass(frozen=True)
class Plan:
    actions: list[Action]
    conflicts: list[str]  # "ConfigMap g-graph": exists, owned by someone else


def child_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def children_selector(graph_name: str) -> str:
    """Label selector of one graph's children (what the operator lists and watches)."""
    return f"{INSTANCE_LABEL}={graph_name},{MANAGED_BY_LABEL}={MANAGED_BY}"


# ---------------------------------------------------------------- desired state


def decide_replicas(graph: InferenceGraph, recommended: Mapping[Role, int] | None = None) -> dict[Role, int]:
    """Replica count per role: the one place they are decided.

    The spec's ``replicas``, except for roles with ``autoscaling.enabled``: there the planner's
    ``recommended`` count (kept within minReplicas..maxReplicas), or, before its first decision,
    the spec's count within those bounds. A decision for a role that does not autoscale is
    ignored: manual ``replicas`` win. Nothing else writes ``spec.replicas`` of a child Deployment.
    """
    out = {role: service.replicas for role in Role if (service := graph.spec.services.get(role)) is not None}
    autoscaled = graph.spec.autoscaled()
    for role, scaling in autoscaled.items():
        out[role] = RoleLimits.from_spec(scaling).clamp(int((recommended or {}).get(role, out[role])))
    if autoscaled:
        out[Role.PLANNER] = 1  # the planner Deployment
    return out


def graph_manifest_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a stored InferenceGraph the spec model reads (server metadata dropped)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": body.get("spec") or {},
    }


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], uid=meta["uid"], namespace=meta.get("namespace") or "default")


def desired_children(
    body: Mapping[str, Any],
    defaults: OperatorDefaults,
    advise: Callable[[InferenceGraph], Mapping[Role, int] | None] | None = None,
) -> Desired:
    """Render a stored graph; a spec the schema let through but the model rejects is an error.
    ``advise(graph)``: the planner's recommended replicas for the parsed graph, if any."""
    try:
        graph = parse_graph(graph_manifest_of(body))
    except SpecError as err:
        return Desired(graph=None, error=err)
    replicas = decide_replicas(graph, advise(graph) if advise else None)
    children = render(graph, owner_of(body), defaults, replicas)
    too_long = [
        c["metadata"]["name"] for c in children if c["kind"] == "Service" and len(c["metadata"]["name"]) > 63
    ]
    if too_long:  # a Service name is a DNS label; the API server would refuse it after the rest exists
        spare = 63 - (len(too_long[0]) - len(graph.metadata.name))
        message = f"at most {spare} characters: the Service {too_long[0]} would exceed 63"
        return Desired(graph=None, error=SpecError("metadata.name", message))
    return Desired(graph=graph, children=children, replicas=replicas)


# ---------------------------------------------------------------- plan


def is_controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def drift(desired: Any, observed: Any, path: str = "") -> str | None:
    """The first path where ``desired`` is not contained in ``observed``, or None."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return path or "<root>"
        for key, value in desired.items():
            found = drift(value, observed.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return path or "<root>"
        for i, (want, have) in enumerate(zip(desired, observed, strict=True)):
            found = drift(want, have, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if desired == observed else (path or "<root>")


def plan(desired: Iterable[dict[str, Any]], observed: Iterable[Mapping[str, Any]], owner_uid: str) -> Plan:
    """Actions that make the observed children equal the desired ones."""
    wanted = {child_key(obj): obj for obj in desired}
    ours: dict[tuple[str, str], Mapping[str, Any]] = {}
    conflicts = []
    for obj in observed:
        key = child_key(obj)
        if is_controlled_by(obj, owner_uid):
            ours[key] = obj
        elif key in wanted:
            conflicts.append(f"{key[0]} {key[1]}")
    actions = []
    for key, obj in wanted.items():
        if f"{key[0]} {key[1]}" in conflicts:
            continue
        have = ours.get(key)
        if have is None:
            actions.append(Action(Verb.CREATE, obj, "missing"))
        else:
            where = drift(obj, have)
            if where:
                actions.append(Action(Verb.PATCH, obj, f"drift at {where}"))
    for key, obj in ours.items():
        if key not in wanted:
            actions.append(Action(Verb.DELETE, dict(obj), "no longer desired"))
    return Plan(actions=actions, conflicts=sorted(conflicts))


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class Problems:
    """What went wrong in this pass besides the children's own state."""

    spec_error: SpecError | None = None
    conflicts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "create Deployment g-decode: 403 Forbidden"


def _role_of(deployment: Mapping[str, Any]) -> str | None:
    return (deployment.get("metadata", {}).get("labels") or {}).get(COMPONENT_LABEL)


def role_counts(
    deployments: Iterable[Mapping[str, Any]], replicas: Mapping[Role, int] | None
) -> dict[str, dict[str, int]]:
    """Per role: desired (the operator's decision, else the Deployment's spec), replicas, ready."""
    observed = {role: d for d in deployments if (role := _role_of(d))}
    roles = [r.value for r in replicas] if replicas is not None else sorted(observed)
    out = {}
    for role in roles:
        deployment = observed.get(role, {})
        status = deployment.get("status") or {}
        desired = (
            replicas[Role(role)] if replicas is not None else deployment.get("spec", {}).get("replicas", 0)
        )
        out[role] = {
            "desired": desired,
            "replicas": status.get("replicas", 0),
            "ready": status.get("readyReplicas", 0),
        }
    return out


def rollout_pending(deployment: Mapping[str, Any], desired: int) -> str | None:
    """Why a Deployment has not finished rolling out, or None when it has."""
    meta, status = deployment.get("metadata", {}), deployment.get("status") or {}
    name = meta.get("name", "?")
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return f"{name}: the new spec is not yet picked up"
    updated = status.get("updatedReplicas", 0)
    if updated < desired:
        return f"{name}: {updated}/{desired} pods updated"
    if status.get("replicas", 0) > desired:
        return f"{name}: {status['replicas'] - desired} old pods terminating"
    return None


def _deployment_failure(deployment: Mapping[str, Any]) -> str | None:
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        stuck = cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded"
        failed = cond.get("type") == "ReplicaFailure" and cond.get("status") == "True"
        if stuck or failed:
            return f"{deployment['metadata']['name']}: {cond.get('message') or cond.get('reason')}"
    return None


def _condition(kind: str, true: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True" if true else "False", "reason": reason, "message": message}


def conditions(
    counts: Mapping[str, Mapping[str, int]],
    deployments: Iterable[Mapping[str, Any]],
    problems: Problems,
    changed: bool,
) -> list[dict[str, str]]:
    """Ready, Progressing and Degraded, each with a CamelCase reason and a message for people."""
    deployments = list(deployments)
    by_role = {_role_of(d): d for d in deployments}
    short = [f"{role} {c['ready']}/{c['desired']}" for role, c in counts.items() if c["ready"] < c["desired"]]
    missing = [role for role in counts if role not in by_role]
    ready = not short and not missing and problems.spec_error is None
    ready_cond = _condition(
        "Ready",
        ready,
        "AllRolesReady" if ready else ("InvalidSpec" if problems.spec_error else "RolesNotReady"),
        "every role has its desired ready pods"
        if ready
        else "; ".join(
            [str(problems.spec_error)] * bool(problems.spec_error)
            + [f"not ready: {', '.join(short)}"] * bool(short)
            + [f"missing: {', '.join(missing)}"] * bool(missing)
        ),
    )

    rolling = [
        why
        for role, c in counts.items()
        if role in by_role and (why := rollout_pending(by_role[role], c["desired"]))
    ]
    progressing = bool(rolling or missing or changed) and problems.spec_error is None
    if problems.spec_error is not None:
        progress_cond = _condition(
            "Progressing", False, "InvalidSpec", "the spec is not applied until it is fixed"
        )
    else:
        progress_cond = _condition(
            "Progressing",
            progressing,
            "RollingOut" if progressing else "Reconciled",
            "; ".join(rolling)
            or ("children created or updated" if progressing else "children match the spec"),
        )

    failed = [why for d in deployments if (why := _deployment_failure(d))]
    if problems.spec_error is not None:
        reason, message = "InvalidSpec", f"{problems.spec_error}; nothing was created or changed"
    elif problems.conflicts:
        reason, message = (
            "ChildConflict",
            "exists and is not owned by this graph: " + ", ".join(problems.conflicts),
        )
    elif problems.failures:
        reason, message = "ApplyFailed", "; ".join(problems.failures)
    elif failed:
        reason, message = "RolloutFailed", "; ".join(failed)
    else:
        reason, message = "AsExpected", "no problems"
    degraded_cond = _condition("Degraded", reason != "AsExpected", reason, message)
    return [ready_cond, progress_cond, degraded_cond]


def phase_of(conds: Iterable[Mapping[str, str]]) -> str:
    by_type = {c["type"]: c for c in conds}
    if by_type["Degraded"]["reason"] == "InvalidSpec":
        return "Failed"
    if by_type["Degraded"]["status"] == "True":
        return "Degraded"
    if by_type["Progressing"]["status"] == "True":
        return "Progressing"
    if by_type["Ready"]["status"] == "True":
        return "Ready"
    return "Pending"


def _with_transition_times(
    new: list[dict[str, str]], old: Iterable[Mapping[str, Any]], now: str
) -> list[dict[str, str]]:
    """A condition keeps its lastTransitionTime while its status stays the same."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        if before is not None and before.get("status") == cond["status"]:
            changed = before.get("lastTransitionTime", now)
        else:
            changed = now
        out.append({**cond, "lastTransitionTime": changed})
    return out


def graph_status(
    body: Mapping[str, Any],
    desired: Desired,
    children: Iterable[Mapping[str, Any]],
    problems: Problems,
    changed: bool,
    now: str,
) -> dict[str, Any]:
    """The status subresource for ``body`` given its children as they are now."""
    deployments = [c for c in children if c.get("kind") == "Deployment"]
    counts = role_counts(deployments, desired.replicas if desired.graph else None)
    conds = conditions(counts, deployments, problems, changed)
    old = (body.get("status") or {}).get("conditions") or []
    status: dict[str, Any] = {
        "phase": phase_of(conds),
        "observedGeneration": body.get("metadata", {}).get("generation", 0),
        "ready": f"{sum(c['ready'] for c in counts.values())}/{sum(c['desired'] for c in counts.values())}",
        "services": counts,
        "conditions": _with_transition_times(conds, old, now),
    }
    if desired.graph is not None and Role.FRONTEND in desired.replicas:
        status["endpoint"] = frontend_endpoint(desired.graph, owner_of(body).namespace)
    elif (body.get("status") or {}).get("endpoint"):
        status["endpoint"] = body["status"]["endpoint"]
    return status


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """``new`` as a JSON merge patch over ``old``, or None when writing it would change nothing
    (no write, so no watch event, per idle pass). Roles and an endpoint that disappeared are
    removed (null) rather than left behind."""
    old = old or {}
    patch = dict(new)
    gone_roles = set(old.get("services") or {}) - set(new.get("services") or {})
    if gone_roles:
        patch["services"] = {**dict.fromkeys(gone_roles), **new.get("services", {})}
    if old.get("endpoint") and "endpoint" not in new:
        patch["endpoint"] = None
    unchanged = drift(new, old) is None and not gone_roles and "endpoint" not in patch.keys() - new.keys()
    return None if unchanged else patch
