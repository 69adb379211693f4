"""Where the infrastructure is: the connection settings every role process shares.

Built from :class:`~inference_graph.settings.RuntimeSettings` (``NATS_SERVER``,
``ETCD_ENDPOINTS``, ``IG_NAMESPACE``, ``IG_LEASE_TTL``; the operator injects them,
a user's own env wins), which validates them at start-up and names the variable
of a bad value. ``IG_NAMESPACE`` is the graph name: every subject and key lives
under it, so two graphs can share one NATS and one etcd.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..settings import ConfigError, Env, RuntimeSettings

__all__ = ["DEFAULT_NAMESPACE", "ConfigError", "RuntimeConfig"]

_DEFAULTS = RuntimeSettings()
DEFAULT_NAMESPACE = "default"  # outside a graph; a graph's roles use the graph's name


@dataclass(frozen=True)
class RuntimeConfig:
    """Connection settings shared by every role process."""

    nats_url: str = _DEFAULTS.nats_url
    etcd_endpoints: list[str] = field(default_factory=lambda: list(_DEFAULTS.etcd_endpoints))
    namespace: str = DEFAULT_NAMESPACE
    lease_ttl: float = _DEFAULTS.lease_ttl

    @classmethod
    def from_settings(cls, settings: RuntimeSettings, namespace: str = DEFAULT_NAMESPACE) -> RuntimeConfig:
        """``namespace`` is used where ``IG_NAMESPACE`` is unset."""
        return cls(
            nats_url=settings.nats_url,
            etcd_endpoints=list(settings.etcd_endpoints),
            namespace=settings.namespace or namespace,
            lease_ttl=settings.lease_ttl,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """Read the four variables (default: this process's environment); unset or empty means the default."""
        return cls.from_settings(RuntimeSettings.load(environ))

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`, for launching child processes."""
        return {
            Env.NATS_SERVER: self.nats_url,
            Env.ETCD_ENDPOINTS: ",".join(self.etcd_endpoints),
            Env.IG_NAMESPACE: self.namespace,
            Env.IG_LEASE_TTL: f"{self.lease_ttl:g}",
        }
