"""Kubernetes side of inference_graph: the InferenceGraph CRD, rendering of a graph
into Kubernetes objects, and (next step) the kopf operator that applies them.

Everything here reuses ``inference_graph.core``: the CRD schema is generated from
the spec model and the Deployments from ``desired_instances``.
"""
