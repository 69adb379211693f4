"""Fixtures for the Kubernetes tests: no API server, only pure rendering and real validators."""

from __future__ import annotations

import pytest

from .common import KUBE_VERSIONS


@pytest.fixture
def strict_validate():
    """``kubernetes_validate.validate`` in strict mode (unknown fields fail) for one built-in object."""
    import kubernetes_validate  # a test dependency: missing means a broken setup, not a skip

    def check(obj: dict) -> None:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)

    return check
