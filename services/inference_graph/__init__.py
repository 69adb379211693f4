"""Disaggregated LLM serving: one InferenceGraph, run locally or on Kubernetes.

Layers (enforced by ``.importlinter``): ``wire`` (message structs) <- ``errors``
(``ServingError``, the one exception a client sees) <- ``core`` (pure logic) <-
``runtime`` / ``engines`` / ``models`` (I/O and plug-ins) <-
``roles`` (one subpackage per role) <- ``launcher`` (local runtime).
"""
