"""Paths and versions shared by the Kubernetes tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# Oldest and newest checked; kubernetes-validate ships 1.25-1.37. The preStop sleep action needs >= 1.30.
KUBE_VERSIONS = ("1.33.0", "1.37.0")
# `kubectl get ig -o wide`: the CRD's printer columns (per-role ready counts are -o wide only)
WIDE_HEADER = [
    "NAME",
    "PHASE",
    "READY",
    "FRONTEND",
    "PROCESSOR",
    "ROUTER",
    "DECODE",
    "PREFILL",
    "ENDPOINT",
    "AGE",
]
