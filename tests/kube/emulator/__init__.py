"""An in-process Kubernetes API emulator for tests: real kubectl, kopf and Helm run against it.

Modules: resources (catalogue, CRD registration), store (objects, resourceVersion, watch fan-out),
objects (metadata rules), lifecycle (finalizers, garbage collection, namespaces), workloads (/scale, readiness),
patching (merge, JSON, strategic merge, server-side apply), schema (CRD pruning, defaulting,
validation), selectors, discovery, openapi, table, handlers (HTTP routing), server (background thread).
See docs/kubernetes.md, "Testing against the API emulator".
"""

from .api import Api
from .server import EmulatorServer

__all__ = ["Api", "EmulatorServer"]
