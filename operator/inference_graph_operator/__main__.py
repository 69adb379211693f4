"""``python -m inference_graph_operator``: the operator in the foreground (the chart's pod, ``make operator``)."""

from __future__ import annotations

import logging
import sys

import kopf

from .config import OperatorConfig
from .controller import GraphController
from .handlers import make_registry, memo_for
from .kube import RestKubeApi
from .planner_advice import PlannerAdvice


def main(argv: list[str] | None = None) -> None:
    config = OperatorConfig.load(argv)
    logging.basicConfig(level=config.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.level > logging.DEBUG:  # kopf logs every handler call at INFO; ours log what was done
        logging.getLogger("kopf.objects").setLevel(max(config.level, logging.WARNING))
    logging.getLogger("inference_graph_operator").info("config: %s", config.describe())
    try:
        api = RestKubeApi.connect(config.kubeconfig, config.in_cluster)
    except Exception as err:  # kubernetes.config raises ConfigException or OSError for a bad kubeconfig
        sys.exit(f"inference_graph_operator: no usable Kubernetes credentials: {err}")
    # The planners' decisions (graphs with autoscaling roles), from the chart's etcd or the graph's own.
    advice = PlannerAdvice(config.defaults.etcd_endpoints)
    controller = GraphController(api, config.defaults, advisor=advice)
    kopf.run(
        registry=make_registry(),
        memo=memo_for(controller, config, advice),
        standalone=True,  # one replica (the chart's Deployment is Recreate); no peering CRDs needed
        clusterwide=not config.namespace,
        namespaces=[config.namespace] if config.namespace else (),
        liveness_endpoint=config.liveness or None,
    )


if __name__ == "__main__":
    main()
