"""Paths and versions shared by the Kubernetes tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# Oldest and newest checked; kubernetes-validate ships 1.25-1.37. The preStop sleep action needs >= 1.30.
KUBE_VERSIONS = ("1.33.0", "1.37.0")
