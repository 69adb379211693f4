"""Every NATS subject and etcd key, as pure functions.

One place builds names so that publishers and subscribers can never disagree,
and so that the layout can be read in one screen:

NATS (``ns`` = namespace = graph name)::

    ig.{ns}.{component}.{endpoint}                 load-balanced (queue group = component)
    ig.{ns}.{component}.{endpoint}.{instance_id}   directed to one instance
    ig.{ns}.{component}.control.{instance_id}      control (cancel) of one instance
    ig.{ns}.events.kv.{instance_id}                KV cache events of one worker
    ig.{ns}.events.load.{instance_id}              load metrics of one worker

etcd::

    /ig/{ns}/instances/{component}/{instance_id}   InstanceInfo (JSON), under a lease
    /ig/{ns}/models/{model}/{instance_id}          model registry, under the same lease

NATS tokens may not contain ``.`` (separator), whitespace or ``*``/``>``
(wildcards), so :func:`token` maps anything outside ``[A-Za-z0-9_-]`` to ``_``.
etcd key segments are percent-encoded instead (:func:`key_segment`), because model
names such as ``org/model`` must survive the round trip back from a key.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

SUBJECT_ROOT = "ig"
KEY_ROOT = "/ig"
CONTROL = "control"

_BAD_TOKEN_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def token(name: str) -> str:
    """One NATS subject token: a name with separator/wildcard/space characters replaced.

    The mapping is not reversible; it only has to be deterministic, because the
    same function builds the subject on both sides.
    """
    if not name:
        raise ValueError("a NATS subject token cannot be empty")
    return _BAD_TOKEN_CHARS.sub("_", name)


def _subject(*parts: str) -> str:
    return ".".join([SUBJECT_ROOT, *(token(p) for p in parts)])


# ---------------------------------------------------------------- request plane


def endpoint_subject(namespace: str, component: str, endpoint: str) -> str:
    """Load-balanced subject of an endpoint; servers subscribe with queue group = component."""
    return _subject(namespace, component, endpoint)


def instance_subject(namespace: str, component: str, endpoint: str, instance_id: str) -> str:
    """Directed subject: reaches only ``instance_id``'s endpoint."""
    return _subject(namespace, component, endpoint, instance_id)


def control_subject(namespace: str, component: str, instance_id: str) -> str:
    """Where callers send ``CancelRequest`` for streams served by ``instance_id``."""
    return _subject(namespace, component, CONTROL, instance_id)


def queue_group(component: str) -> str:
    """NATS queue group for a component's load-balanced endpoints."""
    return token(component)


def check_endpoint(endpoint: str) -> str:
    """Reject endpoint names that would collide with the control subject."""
    if token(endpoint) == CONTROL:
        raise ValueError(f"endpoint name {endpoint!r} is reserved for the control subject")
    return endpoint


# ---------------------------------------------------------------- event plane


def kv_events_subject(namespace: str, instance_id: str) -> str:
    return _subject(namespace, "events", "kv", instance_id)


def load_subject(namespace: str, instance_id: str) -> str:
    return _subject(namespace, "events", "load", instance_id)


def kv_events_wildcard(namespace: str) -> str:
    """KV events of every worker of the namespace."""
    return _subject(namespace, "events", "kv") + ".*"


def load_wildcard(namespace: str) -> str:
    """Load metrics of every worker of the namespace."""
    return _subject(namespace, "events", "load") + ".*"


# ---------------------------------------------------------------- etcd keys


def key_segment(name: str) -> str:
    """One etcd key segment: percent-encoded so ``/`` inside a name stays inside it."""
    if not name:
        raise ValueError("an etcd key segment cannot be empty")
    return quote(name, safe="")


def parse_segment(segment: str) -> str:
    """Inverse of :func:`key_segment`."""
    return unquote(segment)


def namespace_prefix(namespace: str) -> str:
    return f"{KEY_ROOT}/{key_segment(namespace)}/"


def instances_prefix(namespace: str, component: str | None = None) -> str:
    """Prefix of all instances of a namespace, or of one component."""
    prefix = namespace_prefix(namespace) + "instances/"
    return prefix if component is None else prefix + key_segment(component) + "/"


def instance_key(namespace: str, component: str, instance_id: str) -> str:
    return instances_prefix(namespace, component) + key_segment(instance_id)


def models_prefix(namespace: str) -> str:
    return namespace_prefix(namespace) + "models/"


def model_key(namespace: str, model: str, instance_id: str) -> str:
    return models_prefix(namespace) + key_segment(model) + "/" + key_segment(instance_id)


def planner_replicas_key(namespace: str) -> str:
    """The planner's latest decision: ``{role: replicas}`` (JSON), read by the launcher."""
    return namespace_prefix(namespace) + "planner/replicas"


def split_key(prefix: str, key: str) -> list[str]:
    """Decoded segments of ``key`` after ``prefix`` (``[]`` if it is not under it)."""
    if not key.startswith(prefix):
        return []
    return [parse_segment(s) for s in key[len(prefix) :].split("/") if s]
