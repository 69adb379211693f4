"""The OpenAI-compatible HTTP frontend.

``create_app(processor, directory)`` builds the FastAPI app; ``ports`` holds the
two boundaries it depends on (``ProcessorClient``, ``ModelDirectory``), which
the runtime wires to NATS and etcd and tests replace with in-memory doubles.
"""

from .app import create_app
from .ports import ModelCard, ModelDirectory, ProcessorClient

__all__ = ["ModelCard", "ModelDirectory", "ProcessorClient", "create_app"]
