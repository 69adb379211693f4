"""The operator's decisions as pure functions: no API calls, no kopf.

One reconcile pass is ``desired_children`` (the graph rendered, or the spec error
that stops it) → ``plan`` (desired vs. the children observed in the cluster →
apply / delete actions) → ``graph_status`` (from the children as they are
after the actions). ``handlers`` does the I/O around these; the tests drive them with
plain dicts.

Rules:

- Only children whose controller ownerReference is this graph (by uid) are ours: an
  object with a child's name that belongs to something else is never patched or
  deleted (it is reported as a ``ChildConflict``).
- Drift is "the desired object is not a subset of the observed one": fields the API
  server, other controllers or users add (defaults, status, labels, annotations, an
  env var) are not drift, a field we render that differs or is missing is. Lists whose
  items have a ``name`` (or ``uid``) are matched by it, as server-side apply merges them
  (containers, env, volumes, ports, ownerReferences); other lists must match item by
  item. A drifted or missing child is applied whole (server-side apply): the server
  keeps the fields others own and reports a field they set to another value as a
  conflict, which the controller reports and then forces (see ``controller``).
- Replica counts come from :func:`decide_replicas` and, for worker roles, the role's
  InferenceGraphScaler (:func:`scale_decisions`); the operator is the only writer of a
  child Deployment's ``spec.replicas``: a ``kubectl scale`` of the Deployment is drift
  and is undone (scale the role's InferenceGraphScaler instead).
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

from .crd import SCALED_ROLES, SCALER_KIND
from .kube import FIELD_MANAGER
from .render import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    OperatorDefaults,
    Owner,
    child_name,
    frontend_endpoint,
    render,
    render_scaler,
)

MANAGED_BY = "inference-graph-operator"
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget", SCALER_KIND)
MISSING = "missing"


class Verb(enum.StrEnum):
    APPLY = "apply"  # server-side apply: creates a missing child, repairs a drifted one
    DELETE = "delete"


@dataclass(frozen=True)
class Action:
    verb: Verb
    obj: dict[str, Any]  # desired object (apply) or the observed one (delete)
    why: str  # "missing", "drift at spec.replicas", "no longer desired"
    # A scaler's spec.replicas applied as the graph's count (not a planner decision): on a conflict
    # someone scaled the role meanwhile, so the operator applies again without it instead of forcing.
    yield_replicas: bool = False

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
    scales: dict[Role, Scale] = field(default_factory=dict)

    @property
    def yield_replicas(self) -> set[tuple[str, str]]:
        """Scalers whose applied replicas is the graph's count, not a planner decision."""
        assert self.graph is not None or not self.scales
        return {
            (SCALER_KIND, child_name(self.graph.metadata.name, role))
            for role, scale in self.scales.items()
            if self.graph is not None and scale.apply is not None and not scale.planner
        }


@dataclass(frozen=True)
class Scale:
    """One worker role's replicas this pass, and what (if anything) the operator applies to the
    role's InferenceGraphScaler ``spec.replicas``."""

    replicas: int  # the role's Deployment replicas
    apply: int | None  # applied to the scaler's spec.replicas; None: left to whoever scaled it
    planner: bool = False  # ``apply`` is the planner's decision (forced on a conflict: it owns the role)


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


def owns_replicas(scaler: Mapping[str, Any]) -> bool:
    """Whether the operator's own apply still owns the scaler's ``spec.replicas`` (nobody has scaled
    the role since the operator last set it), from the object's managedFields."""
    for entry in scaler.get("metadata", {}).get("managedFields") or []:
        if (
            entry.get("manager") == FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
            and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        ):
            return True
    return False


def scale_decisions(
    graph: InferenceGraph,
    recommended: Mapping[Role, int] | None,
    scalers: Mapping[Role, Mapping[str, Any]],
) -> dict[Role, Scale]:
    """Per worker role: its replicas, and what to apply to its InferenceGraphScaler (``scalers``:
    the observed ones, by role). One writer per field:

    - a role that autoscales, once its planner has decided: the decision (within bounds) is applied
      to the scaler and wins a conflict (``kubectl scale`` of it is undone: the planner owns it);
    - else, while the operator's apply owns the scaler's replicas (a new scaler, or nobody scaled it
      since): the graph's ``replicas`` (within bounds), so editing the graph scales the role;
    - else someone scaled the role (``kubectl scale``, an HPA): its value stands and the Deployment
      follows it; the graph's ``replicas`` is no longer applied.
    """
    from_spec = decide_replicas(graph)
    decided = decide_replicas(graph, recommended)
    autoscaled = graph.spec.autoscaled()
    out = {}
    for role in SCALED_ROLES:
        if role not in from_spec:
            continue
        observed = scalers.get(role)
        if role in autoscaled and role in (recommended or {}):
            out[role] = Scale(decided[role], decided[role], planner=True)
        elif observed is None or owns_replicas(observed):
            out[role] = Scale(from_spec[role], from_spec[role])
        else:
            current = int((observed.get("spec") or {}).get("replicas") or 0)
            if role in autoscaled:
                current = RoleLimits.from_spec(autoscaled[role]).clamp(current)
            out[role] = Scale(current, None)
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
    observed: Iterable[Mapping[str, Any]] = (),
    scalers: bool = True,
) -> Desired:
    """Render a stored graph; a spec the schema let through but the model rejects is an error.
    ``advise(graph)``: the planner's recommended replicas for the parsed graph, if any;
    ``observed``: the graph's children as listed (its InferenceGraphScalers are read);
    ``scalers`` False: the scaler CRD is not installed, so none are rendered."""
    try:
        graph = parse_graph(graph_manifest_of(body))
    except SpecError as err:
        return Desired(graph=None, error=err)
    recommended = advise(graph) if advise else None
    uid = body["metadata"]["uid"]
    observed_scalers = {
        Role(role): obj
        for obj in observed
        if obj.get("kind") == SCALER_KIND
        and is_controlled_by(obj, uid)
        and (role := (obj.get("spec") or {}).get("role")) in {r.value for r in SCALED_ROLES}
    }
    scales = scale_decisions(graph, recommended, observed_scalers) if scalers else {}
    replicas = {**decide_replicas(graph, recommended), **{role: s.replicas for role, s in scales.items()}}
    owner = owner_of(body)
    children = render(graph, owner, defaults, replicas)
    children += [render_scaler(graph, role, owner, defaults, scale.apply) for role, scale in scales.items()]
    too_long = [
        c["metadata"]["name"] for c in children if c["kind"] == "Service" and len(c["metadata"]["name"]) > 63
    ]
    if too_long:  # a Service name is a DNS label; the API server would refuse it after the rest exists
        spare = 63 - (len(too_long[0]) - len(graph.metadata.name))
        message = f"at most {spare} characters: the Service {too_long[0]} would exceed 63"
        return Desired(graph=None, error=SpecError("metadata.name", message))
    return Desired(graph=graph, children=children, replicas=replicas, scales=scales)


# ---------------------------------------------------------------- plan


def is_controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


LIST_KEYS = ("name", "uid")  # how server-side apply keys the map-lists the operator renders


def _list_key(items: list[Any]) -> str | None:
    """The key items of ``items`` are merged by, or None for an atomic list (compared whole)."""
    for key in LIST_KEYS:
        if items and all(isinstance(item, Mapping) and key in item for item in items):
            return key
    return None


def drift(desired: Any, observed: Any, path: str = "") -> str | None:
    """The first path where ``desired`` is not contained in ``observed``, or None. Items of a list
    keyed by name (or uid) are found by key, and others' extra items are not drift."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return path or "<root>"
        for key, value in desired.items():
            found = drift(value, observed.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(desired, list) and isinstance(observed, list) and (key := _list_key(desired)):
        by_key = {item.get(key): item for item in observed if isinstance(item, Mapping)}
        for want in desired:
            found = drift(want, by_key.get(want[key]), f"{path}[{key}={want[key]}]")
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


def plan(
    desired: Iterable[dict[str, Any]],
    observed: Iterable[Mapping[str, Any]],
    owner_uid: str,
    yield_replicas: Iterable[tuple[str, str]] = (),
) -> Plan:
    """Actions that make the observed children equal the desired ones. Scalers in ``yield_replicas``
    carry the graph's count, which gives way on a conflict (:class:`Action`)."""
    yield_replicas = set(yield_replicas)
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
        yields = key[0] == SCALER_KIND and "replicas" in obj["spec"] and key in yield_replicas
        if have is None:
            actions.append(Action(Verb.APPLY, obj, MISSING, yield_replicas=yields))
        else:
            where = drift(obj, have)
            if where:
                actions.append(Action(Verb.APPLY, obj, f"drift at {where}", yield_replicas=yields))
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
    failures: list[str] = field(default_factory=list)  # "apply Deployment g-decode: 403 Forbidden"
    unschedulable: dict[str, str] = field(default_factory=dict)  # role -> the scheduler's message


def unschedulable_roles(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Per role, why the scheduler cannot place one of its pods (PodScheduled False, Unschedulable: e.g.
    a tensorParallelSize above any node's GPUs), in the scheduler's words."""
    out: dict[str, str] = {}
    for pod in pods:
        role = _role_of(pod)
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
                "PodScheduled",
                "False",
                "Unschedulable",
            ):
                out.setdefault(role or "?", cond.get("message") or "Unschedulable")
    return dict(sorted(out.items()))


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
    elif problems.unschedulable:
        reason, message = (
            "Unschedulable",
            "; ".join(
                f"{role}: pods cannot be scheduled: {why}" for role, why in problems.unschedulable.items()
            ),
        )
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
