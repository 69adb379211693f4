"""Paths and versions shared by the Kubernetes tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
KUBE_VERSION = "1.33.0"  # the oldest version we check against; kubernetes-validate ships 1.25-1.37
