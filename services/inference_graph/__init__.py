"""Disaggregated LLM serving: one InferenceGraph, run locally or on Kubernetes.

Layers (enforced by ``.importlinter``, lowest first): ``environment`` (every variable name,
fixed port and time; the only reader of ``os.environ``) <- ``settings`` (typed settings, read
once at start-up) <- ``wire`` (message structs, the error types) <- ``errors`` (``ServingError``,
the one exception a client sees) <- ``core`` (pure logic) <- ``runtime`` / ``engines`` /
``models`` (I/O and plug-ins) <- ``processing`` / ``planning`` (request processing, scaling
decisions) <- ``roles`` (one subpackage per role) <- ``launcher`` (local runtime).
"""
