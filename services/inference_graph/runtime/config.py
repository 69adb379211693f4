"""Where the infrastructure is, read once from the environment.

Env names ``NATS_SERVER`` and ``ETCD_ENDPOINTS`` come from the seeds' deployments
(the operator injects them; a user's own env wins). ``IG_NAMESPACE`` is the graph
name: every subject and key lives under it, so two graphs can share one NATS and
one etcd. Bad values fail at start-up with the variable's name in the message,
not later as a connection error far from the cause.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

NATS_ENV = "NATS_SERVER"
ETCD_ENV = "ETCD_ENDPOINTS"
NAMESPACE_ENV = "IG_NAMESPACE"
LEASE_TTL_ENV = "IG_LEASE_TTL"

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"
DEFAULT_NAMESPACE = "default"
DEFAULT_LEASE_TTL = 10.0


class ConfigError(ValueError):
    """An environment variable holds a value the runtime cannot use."""

    def __init__(self, variable: str, value: str, reason: str):
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"{variable}={value!r}: {reason}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Connection settings shared by every role process."""

    nats_url: str = DEFAULT_NATS_URL
    etcd_endpoints: list[str] = field(default_factory=lambda: [DEFAULT_ETCD_ENDPOINT])
    namespace: str = DEFAULT_NAMESPACE
    lease_ttl: float = DEFAULT_LEASE_TTL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RuntimeConfig:
        """Read the four variables; unset or empty means the default."""
        return cls(
            nats_url=_nats_url(environ.get(NATS_ENV, "")),
            etcd_endpoints=_etcd_endpoints(environ.get(ETCD_ENV, "")),
            namespace=_namespace(environ.get(NAMESPACE_ENV, "")),
            lease_ttl=_lease_ttl(environ.get(LEASE_TTL_ENV, "")),
        )

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`, for launching child processes."""
        return {
            NATS_ENV: self.nats_url,
            ETCD_ENV: ",".join(self.etcd_endpoints),
            NAMESPACE_ENV: self.namespace,
            LEASE_TTL_ENV: f"{self.lease_ttl:g}",
        }


def _nats_url(raw: str) -> str:
    """NATS accepts a comma-separated server list; each must be nats://, tls:// or ws(s)://."""
    if not raw.strip():
        return DEFAULT_NATS_URL
    for url in raw.split(","):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ConfigError(NATS_ENV, raw, "expected nats://host:port (comma-separated for several)")
        _check_port(NATS_ENV, raw, parts)
    return ",".join(u.strip() for u in raw.split(","))


def _etcd_endpoints(raw: str) -> list[str]:
    """Comma-separated; ``host:port`` is accepted and normalised to ``http://host:port``."""
    if not raw.strip():
        return [DEFAULT_ETCD_ENDPOINT]
    endpoints = []
    for item in (s.strip() for s in raw.split(",")):
        if not item:
            continue
        url = item if "://" in item else f"http://{item}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(ETCD_ENV, raw, f"bad endpoint {item!r}; expected http://host:port")
        _check_port(ETCD_ENV, raw, parts)
        endpoints.append(url.rstrip("/"))
    if not endpoints:
        raise ConfigError(ETCD_ENV, raw, "no endpoint given")
    return endpoints


def _check_port(variable: str, raw: str, parts) -> None:
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as exc:
        raise ConfigError(variable, raw, f"bad port: {exc}") from None


def _namespace(raw: str) -> str:
    """The graph name; it becomes a NATS token and an etcd key segment, so no dots or spaces."""
    name = raw.strip()
    if not name:
        return DEFAULT_NAMESPACE
    if any(c in name for c in ". *>/\t\n"):
        raise ConfigError(NAMESPACE_ENV, raw, "must not contain '.', '/', spaces or wildcards")
    return name


def _lease_ttl(raw: str) -> float:
    if not raw.strip():
        return DEFAULT_LEASE_TTL
    try:
        ttl = float(raw)
    except ValueError:
        raise ConfigError(LEASE_TTL_ENV, raw, "expected a number of seconds") from None
    if not math.isfinite(ttl) or ttl < 1:
        raise ConfigError(LEASE_TTL_ENV, raw, "must be a finite number of seconds >= 1")
    return ttl
