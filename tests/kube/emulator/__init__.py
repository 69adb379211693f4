"""An in-process Kubernetes API emulator for tests: real kubectl, kopf and Helm run against it.

Modules: resources (catalogue, CRD registration), store (objects, resourceVersion, watch fan-out),
objects (metadata rules, built-in defaults), api (the verbs), lifecycle (finalizers, garbage
collection, namespaces), workloads (/scale, readiness controller), patching (merge, JSON and
strategic merge patch), managed_fields (field ownership, server-side apply and its conflicts),
schema (CRD pruning, defaulting, validation), builtin_schema (unknown fields of built-in kinds),
validation (names, labels and built-in values), selectors, discovery, openapi, table, protobuf
(request bodies), handlers (HTTP routing, watch streams), server (background thread).
See docs/kubernetes.md, "Testing against the API emulator".
"""

from .api import Api
from .server import EmulatorServer, kubeconfig

__all__ = ["Api", "EmulatorServer", "kubeconfig"]
