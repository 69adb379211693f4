"""The operator process's own settings: one typed object, each field from a flag or an env var.

The Helm chart sets the env (charts/dynamo/templates/operator.yaml); ``make operator``
uses the defaults with the current KUBECONFIG. The variables, their types and defaults
are ``inference_graph.settings.OperatorSettings``, read once here; the graphs' defaults
(image, NATS, etcd, GPU resource) are :class:`render.OperatorDefaults`, built from them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from inference_graph.settings import Env, OperatorSettings

from .render import OperatorDefaults

_DEFAULTS = OperatorSettings()  # the defaults, not the environment
DEFAULT_LIVENESS = _DEFAULTS.liveness  # the chart's livenessProbe port


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = _DEFAULTS.watch_namespace  # "" = all namespaces
    liveness: str = DEFAULT_LIVENESS  # "" = no endpoint
    resync_seconds: float = _DEFAULTS.resync_seconds  # every graph is reconciled at least this often
    log_level: str = _DEFAULTS.log_level
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)
    kubeconfig: str | None = None  # KUBECONFIG; None: the service account, else ~/.kube/config
    in_cluster: bool = False  # KUBERNETES_SERVICE_HOST is set

    @classmethod
    def load(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> OperatorConfig:
        """Flags over ``environ`` (default: this process's environment), read once."""
        settings = OperatorSettings.load(environ)
        parser = argparse.ArgumentParser(
            prog="python -m inference_graph_operator",
            description="Reconcile InferenceGraphs into Deployments, Services and a ConfigMap.",
        )
        parser.add_argument(
            "--namespace",
            default=settings.watch_namespace,
            help=f"watch only this namespace (env {Env.IG_WATCH_NAMESPACE}; default: all namespaces)",
        )
        parser.add_argument(
            "--liveness",
            default=settings.liveness,
            help=f"kopf liveness endpoint URL, '' for none (env {Env.IG_OPERATOR_LIVENESS})",
        )
        parser.add_argument(
            "--resync-seconds",
            type=float,
            default=settings.resync_seconds,
            help=f"reconcile every graph at least this often (env {Env.IG_RESYNC_SECONDS})",
        )
        parser.add_argument(
            "--log-level",
            default=settings.log_level,
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            type=str.upper,
            help=f"env {Env.IG_OPERATOR_LOG_LEVEL}",
        )
        args = parser.parse_args(argv)
        if args.resync_seconds <= 0:
            parser.error("--resync-seconds must be > 0")
        return cls(
            namespace=args.namespace.strip(),
            liveness=args.liveness.strip(),
            resync_seconds=args.resync_seconds,
            log_level=args.log_level,
            defaults=OperatorDefaults.from_settings(settings),
            kubeconfig=settings.kubeconfig,
            in_cluster=settings.kubernetes_service_host is not None,
        )

    @property
    def level(self) -> int:
        return getattr(logging, self.log_level)

    def describe(self) -> dict:
        return asdict(self)
