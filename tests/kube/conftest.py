"""Fixtures for the Kubernetes tests: real validators, and the real control plane of tests/cluster.

`kube` (alias `kube_api`) gives each test its own namespace on the session ``cluster`` (tests/conftest.py:
kube-apiserver with RBAC, controller-manager, scheduler, kwok's fake GPU nodes, LWS, the pinned kubectl and
helm). The namespace has a unique name and is deleted after the test without waiting (its pods, graphs and
releases go with it in the background); a test that needs the deletion done waits for it itself
(`KubeApi.delete_namespace`). Cluster-scoped objects (the InferenceGraph CRD, ClusterRoles) are shared by the
session: `crd` installs the CRD once; helm tests use unique release names. Tests that use the cluster are
marked ``cluster`` and get a timeout that covers the session fixture's first start (see
`pytest_collection_modifyitems`). See docs/kubernetes.md, "Tests against the local control plane".
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import eventually_sync

from .common import KUBE_VERSIONS, ROOT

CRDS = ROOT / "crds"
CRD = CRDS / "inferencegraph.yaml"
# A cold build of the cluster's binaries in the session fixture takes about 40 minutes (docs/kubernetes.md);
# a warm start 10-15 s. Tests that use the cluster get this timeout unless they set their own.
CLUSTER_TIMEOUT = 5400


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here that uses the cluster is marked ``cluster`` and gets CLUSTER_TIMEOUT (unless marked)."""
    here = Path(__file__).parent
    for item in items:
        if "cluster" not in getattr(item, "fixturenames", ()) or here not in Path(item.path).parents:
            continue
        item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CLUSTER_TIMEOUT))


@pytest.fixture
def strict_validate():
    """``kubernetes_validate.validate`` in strict mode (unknown fields fail) for one built-in object."""
    import kubernetes_validate  # a test dependency: missing means a broken setup, not a skip

    def check(obj: dict) -> None:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)

    return check


class KubectlError(AssertionError):
    """kubectl (or helm) exited non-zero; the message carries its command line and output."""

    def __init__(self, result: subprocess.CompletedProcess[str]):
        super().__init__(
            f"{Path(result.args[0]).name} {' '.join(result.args[1:])} failed ({result.returncode}):\n"
            f"{result.stderr}{result.stdout}"
        )
        self.result = result


def _run(
    command: list[str], input: str | None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HELM_NAMESPACE")}
    result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise KubectlError(result)
    return result


def namespace_name(test_name: str) -> str:
    """A DNS-1123 label from the test's name plus a random suffix: unique, and readable in a failure."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 't'}-{secrets.token_hex(3)}"


class KubeApi:
    """One test's namespace on the session cluster, and the ways tests and subprocesses reach it.

    ``kubeconfig`` is the admin's with this namespace as the context's default, so ``kubectl(...)``,
    ``helm(...)``, ``client()`` and any subprocess given that file act in the test's namespace unless told
    otherwise. ``url`` is the API server's address.
    """

    def __init__(self, cluster, namespace: str, workdir: Path):
        self.cluster = cluster
        self.namespace = namespace
        self.bin = Path(cluster.bin)
        self.workdir = workdir
        config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
        self.url: str = config["clusters"][0]["cluster"]["server"]
        for context in config["contexts"]:
            context["context"]["namespace"] = namespace
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps(config, indent=1) + "\n")
        self.kubeconfig.chmod(0o600)
        self._cache = workdir / "kube-cache"  # kubectl's discovery cache, per test, not in $HOME
        self._namespaces: list[str] = []
        self._ssl: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ command lines

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The pinned kubectl in this namespace (as the admin, or with ``kubeconfig``); with check, a
        failure raises with its stderr."""
        command = [
            str(self.bin / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self._cache}",
            *args,
        ]
        return _run(command, input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The cluster's helm (v4) in this namespace, as the admin."""
        command = [
            str(self.bin / "helm"),
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace}",
            *args,
        ]
        return _run(command, None, check, timeout)

    def json(self, *args: str, check: bool = True) -> Any:
        """``kubectl <args> -o json``, parsed; None when the object is not found."""
        result = self.kubectl(*args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            if check:
                raise KubectlError(result)
            return None
        return json.loads(result.stdout)

    def apply(self, *objects: Mapping[str, Any] | str, server_side: bool = False) -> None:
        """``kubectl apply -f -`` of objects (dicts) or YAML text, in this namespace."""
        text = "\n---\n".join(o if isinstance(o, str) else yaml.safe_dump(dict(o)) for o in objects)
        self.kubectl("apply", *(["--server-side"] if server_side else []), "-f", "-", input=text)

    # ------------------------------------------------------------------ clients

    def get(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/apis/apps/v1/namespaces/x/deployments``) as the admin; the JSON body, or
        None on 404. Cheaper than a kubectl process for the polling of ``eventually``."""
        if self._ssl is None:
            pki = Path(self.cluster.state["tmp"]) / "pki"
            self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.url}{path}", context=self._ssl, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def client(self, kubeconfig: Path | None = None):
        """An official-client ApiClient for this cluster as the admin (or ``kubeconfig``): close it, or use it
        as a context manager. Its default namespace is not used by the client: pass ``self.namespace``."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def service_account_kubeconfig(
        self, name: str, namespace: str | None = None, path: Path | None = None, duration: str = "2h"
    ) -> Path:
        """A kubeconfig with a TokenRequest token of ServiceAccount ``name`` (``kubectl create token``): what
        a pod of that account would present, so the real authorizer checks exactly its RBAC."""
        namespace = namespace or self.namespace
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": name, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"].update(user=name, namespace=namespace)
        path = path or self.workdir / f"kubeconfig-{namespace}-{name}"
        path.write_text(json.dumps(config, indent=1) + "\n")
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------------ namespaces

    def create_namespace(self, name: str | None = None) -> str:
        """Another namespace for this test (deleted after it, like its own); returns its name."""
        name = name or namespace_name(self.namespace.rsplit("-", 1)[0])
        self.cluster.kubectl("create", "namespace", name)
        self._namespaces.append(name)
        return name

    def delete_namespace(self, name: str | None = None, wait: bool = True, timeout: float = 60) -> None:
        """Delete a namespace (default: the test's); with wait, until the server has removed it and all it
        held (the namespace controller; finalizers on anything in it must be honoured first)."""
        name = name or self.namespace
        self.cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
        if wait:
            eventually_sync(
                lambda: self.cluster.kubectl("get", "namespace", name, check=False).returncode != 0,
                timeout=timeout,
                interval=0.2,
                what=f"namespace {name} deleted",
            )

    def cleanup(self) -> None:
        for name in [*self._namespaces, self.namespace]:
            self.cluster.kubectl(
                "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
            )


@pytest.fixture(scope="session")
def crd(cluster) -> Path:
    """The project's CRDs (every file in crds/), installed once per session (cluster-scoped: shared by every
    test) and Established. The chart ships the same files (test_crd.py), which helm installs only when
    absent."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
    return CRD


@pytest.fixture
def kube(cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KubeApi]:
    """This test's own namespace on the session cluster (unique name; deleted after the test, not waited
    for). Also the admin kubeconfig defaulting to it, kubectl, helm and a client factory."""
    api = KubeApi(cluster, namespace_name(request.node.name), tmp_path)
    cluster.kubectl("create", "namespace", api.namespace)
    try:
        yield api
    finally:
        api.cleanup()


@pytest.fixture
def kube_api(kube: KubeApi) -> KubeApi:
    """The former name of ``kube``."""
    return kube
