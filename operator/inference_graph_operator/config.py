"""The operator process's own settings: one typed object, each field from a flag or an env var.

The Helm chart sets the env (charts/dynamo/templates/operator.yaml); ``make operator``
uses the defaults with the current KUBECONFIG. The graphs' defaults (image, NATS,
etcd, GPU resource) are :class:`render.OperatorDefaults`, read from the same env.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from .render import OperatorDefaults

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"  # the chart's livenessProbe port


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str = ""  # IG_WATCH_NAMESPACE; "" = all namespaces
    liveness: str = DEFAULT_LIVENESS  # IG_OPERATOR_LIVENESS; "" = no endpoint
    resync_seconds: float = 60.0  # IG_RESYNC_SECONDS: every graph is reconciled at least this often
    log_level: str = "INFO"  # IG_OPERATOR_LOG_LEVEL
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)

    @classmethod
    def load(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
    ) -> OperatorConfig:
        parser = argparse.ArgumentParser(
            prog="python -m inference_graph_operator",
            description="Reconcile InferenceGraphs into Deployments, Services and a ConfigMap.",
        )
        parser.add_argument(
            "--namespace",
            default=environ.get("IG_WATCH_NAMESPACE", ""),
            help="watch only this namespace (env IG_WATCH_NAMESPACE; default: all namespaces)",
        )
        parser.add_argument(
            "--liveness",
            default=environ.get("IG_OPERATOR_LIVENESS", DEFAULT_LIVENESS),
            help="kopf liveness endpoint URL, '' for none (env IG_OPERATOR_LIVENESS)",
        )
        parser.add_argument(
            "--resync-seconds",
            type=float,
            default=float(environ.get("IG_RESYNC_SECONDS", "60")),
            help="reconcile every graph at least this often (env IG_RESYNC_SECONDS)",
        )
        parser.add_argument(
            "--log-level",
            default=environ.get("IG_OPERATOR_LOG_LEVEL", "INFO"),
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            type=str.upper,
            help="env IG_OPERATOR_LOG_LEVEL",
        )
        args = parser.parse_args(argv)
        if args.resync_seconds <= 0:
            parser.error("--resync-seconds must be > 0")
        return cls(
            namespace=args.namespace.strip(),
            liveness=args.liveness.strip(),
            resync_seconds=args.resync_seconds,
            log_level=args.log_level,
            defaults=OperatorDefaults.from_env(environ),
        )

    @property
    def level(self) -> int:
        return getattr(logging, self.log_level)

    def describe(self) -> dict:
        return asdict(self)
