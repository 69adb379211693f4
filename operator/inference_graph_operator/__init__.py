"""Kubernetes side of inference_graph: the InferenceGraph CRD (``crd``), rendering of a graph
into Kubernetes objects (``render``), and the kopf operator that applies them: pure decisions
(``reconcile``), one pass per graph (``controller``), API calls (``kube``), kopf glue
(``handlers``), process settings (``config``), ``python -m inference_graph_operator``.

Everything here reuses ``inference_graph.core``: the CRD schema is generated from
the spec model and the Deployments from ``desired_instances``.
"""
