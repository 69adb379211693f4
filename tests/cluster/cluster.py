"""A real Kubernetes control plane on loopback for tests: `make cluster` / `make cluster-down`.

    python tests/cluster/cluster.py build    # build the pinned binaries once (cached outside the clone)
    python tests/cluster/cluster.py up       # build if needed, start, print `export KUBECONFIG=...`
    python tests/cluster/cluster.py status   # what runs, on which ports
    python tests/cluster/cluster.py down     # stop every process group, remove the temporary data
    python tests/cluster/cluster.py pin      # rewrite build/*/go.mod from versions.env

What `up` starts, each in its own process group, on free 127.0.0.1 ports: etcd (data in a temporary
directory), kube-apiserver (TLS, Node,RBAC authorization, a ServiceAccount issuer), kube-controller-
manager (every default controller, ServiceAccount credentials per controller), kube-scheduler, kwok
(moves the fake Nodes and their Pods through kwok's node-initialize/heartbeat and pod-ready/complete/
delete stages) and the LeaderWorkerSet controller (its CRD applied, its webhooks served on loopback
with a certificate from the cluster's CA and registered by URL). It then creates the fake GPU Nodes.
The admin kubeconfig is `.cluster/kubeconfig`; pids, ports and the temporary directory are in
`.cluster/state.json`, logs in `.cluster/logs/`. Versions: tests/cluster/versions.env.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD = HERE / "build"
VERSIONS_FILE = HERE / "versions.env"
STATE_DIR = Path(os.environ.get("IG_CLUSTER_DIR", REPO / ".cluster"))
CACHE_ROOT = Path(os.environ.get("IG_CLUSTER_CACHE", Path.home() / ".cache" / "inference-graph" / "k8s"))

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
RDMA_RESOURCE = (
    "rdma/ib"  # the RDMA preset's default resource (services/inference_graph/core/spec.py RdmaSpec)
)
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"  # kwok hands out pod IPs from here (API data only: nothing is routed)


@dataclass(frozen=True)
class Binary:
    name: str  # file name in the cache's bin/
    module_dir: str  # build/<dir>
    package: str
    module: str  # the module whose version versions.env pins
    version_key: str


BINARIES = (
    Binary(
        "kube-apiserver",
        "kubernetes",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes",
        "KUBERNETES_VERSION",
    ),
    Binary(
        "kube-controller-manager",
        "kubernetes",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes",
        "KUBERNETES_VERSION",
    ),
    Binary(
        "kube-scheduler",
        "kubernetes",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes",
        "KUBERNETES_VERSION",
    ),
    Binary(
        "kubectl", "kubernetes", "k8s.io/kubernetes/cmd/kubectl", "k8s.io/kubernetes", "KUBERNETES_VERSION"
    ),
    Binary("etcd", "kubernetes", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3", "ETCD_VERSION"),
    Binary("kwok", "kwok", "sigs.k8s.io/kwok/cmd/kwok", "sigs.k8s.io/kwok", "KWOK_VERSION"),
    Binary("lws-controller", "lws", "sigs.k8s.io/lws/cmd", "sigs.k8s.io/lws", "LWS_VERSION"),
    Binary("helm", "helm", "helm.sh/helm/v4/cmd/helm", "helm.sh/helm/v4", "HELM_VERSION"),
)


def read_versions() -> dict[str, str]:
    out = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def ldflags(binary: Binary, versions: dict[str, str]) -> str:
    flags = ["-s", "-w"]
    if binary.module == "k8s.io/kubernetes":
        v = versions["KUBERNETES_VERSION"]
        major, minor = v.lstrip("v").split(".")[:2]
        flags += [
            f"-X k8s.io/component-base/version.gitVersion={v}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
        ]
    elif binary.name == "kwok":
        flags.append(f"-X sigs.k8s.io/kwok/pkg/consts.Version={versions['KWOK_VERSION'].lstrip('v')}")
    elif binary.name == "lws-controller":
        flags.append(f"-X sigs.k8s.io/lws/pkg/version.GitVersion={versions['LWS_VERSION']}")
    elif binary.name == "helm":
        flags.append(f"-X helm.sh/helm/v4/internal/version.version={versions['HELM_VERSION']}")
        flags.append("-X helm.sh/helm/v4/internal/version.gitTreeState=clean")
    return " ".join(flags)


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    # Other people's tests share this machine's 2 cores: two compiles at a time, at the lowest priority.
    env.setdefault("GOFLAGS", "-p=2")
    return env


def go(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["go", *args], cwd=cwd, env=go_env(), text=True, **kw)


def cache_dir() -> Path:
    """~/.cache/inference-graph/k8s/<hash>: keyed by the pins, the wrapper modules and the Go version."""
    h = hashlib.sha256()
    h.update(VERSIONS_FILE.read_bytes())
    for path in sorted(BUILD.glob("*/go.*")):
        h.update(path.relative_to(BUILD).as_posix().encode())
        h.update(path.read_bytes())
    h.update((inspect.getsource(ldflags) + inspect.getsource(go_env)).encode())
    if shutil.which("go") is None:
        sys.exit("cluster: the Go toolchain (go on PATH) builds the cluster's binaries and names their cache")
    goversion = subprocess.run(["go", "env", "GOVERSION", "GOOS", "GOARCH"], capture_output=True, text=True)
    h.update(goversion.stdout.encode())
    return CACHE_ROOT / h.hexdigest()[:16]


def check_pins(versions: dict[str, str]) -> None:
    """Every build/*/go.mod must require exactly what versions.env pins."""
    wrong = []
    for module_dir in sorted({b.module_dir for b in BINARIES}):
        wanted = {b.module: versions[b.version_key] for b in BINARIES if b.module_dir == module_dir}
        for module, version in wanted.items():
            got = go(["list", "-m", "-f", "{{.Version}}", module], BUILD / module_dir, capture_output=True)
            if got.returncode != 0 or got.stdout.strip() != version:
                wrong.append(
                    f"build/{module_dir}: {module} is {got.stdout.strip() or got.stderr.strip()}, "
                    f"versions.env says {version}"
                )
    if wrong:
        sys.exit(
            "versions.env and the wrapper modules disagree (run `cluster.py pin`):\n  " + "\n  ".join(wrong)
        )


def pin() -> None:
    """Rewrite the wrapper modules' requirements from versions.env (go get -tool, then go mod tidy)."""
    versions = read_versions()
    for module_dir in sorted({b.module_dir for b in BINARIES}):
        args = [f"{b.package}@{versions[b.version_key]}" for b in BINARIES if b.module_dir == module_dir]
        if module_dir == "kubernetes":
            # k8s.io/kubernetes' staging modules: released as v0.<minor>.<patch>.
            staging = "v0" + versions["KUBERNETES_VERSION"][2:]
            gomod = BUILD / module_dir / "go.mod"
            text = gomod.read_text()
            text = re.sub(r"(k8s\.io/[a-z-]+ => k8s\.io/[a-z-]+) v0\.\d+\.\d+", rf"\1 {staging}", text)
            gomod.write_text(text)
        subprocess.run(
            ["nice", "-n", "19", "go", "get", "-tool", *args],
            cwd=BUILD / module_dir,
            env=go_env(),
            check=True,
        )
        subprocess.run(
            ["nice", "-n", "19", "go", "mod", "tidy"], cwd=BUILD / module_dir, env=go_env(), check=True
        )
    check_pins(versions)


def missing(cache: Path) -> list[str]:
    names = [b.name for b in BINARIES if not (cache / "bin" / b.name).exists()]
    if not (cache / "share" / "complete").exists():
        names.append("share")
    return names


def build(quiet: bool = False) -> Path:
    """Build what the cache lacks (each binary once per version set); returns the cache directory."""
    versions = read_versions()
    cache = cache_dir()
    todo = missing(cache)
    if not todo:
        return cache
    check_pins(versions)
    (cache / "bin").mkdir(parents=True, exist_ok=True)
    timings = {}
    for b in BINARIES:
        if b.name not in todo:
            continue
        out = cache / "bin" / b.name
        tmp = out.with_name(f".{b.name}.tmp")
        print(f"cluster: building {b.name} ({b.package}@{versions[b.version_key]}) ...", flush=True)
        t0 = time.monotonic()
        cmd = [
            "nice",
            "-n",
            "19",
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            ldflags(b, versions),
            "-o",
            str(tmp),
            b.package,
        ]
        subprocess.run(cmd, cwd=BUILD / b.module_dir, env=go_env(), check=True)
        tmp.rename(out)
        timings[b.name] = round(time.monotonic() - t0, 1)
        print(f"cluster: built {b.name} in {timings[b.name]} s", flush=True)
    if "share" in todo:
        copy_manifests(cache / "share")
    if timings:
        log = cache / "build-times.json"
        old = json.loads(log.read_text()) if log.exists() else {}
        log.write_text(json.dumps({**old, **timings}, indent=1))
    return cache


def module_source(module_dir: str, module: str) -> Path:
    got = go(["list", "-m", "-f", "{{.Dir}}", module], BUILD / module_dir, capture_output=True, check=True)
    path = Path(got.stdout.strip())
    if not path.is_dir():
        go(["mod", "download", module], BUILD / module_dir, check=True)
    return path


def copy_manifests(share: Path) -> None:
    """kwok's stages and StorageClass, LWS's CRD and webhook manifests: from the pinned modules, beside the
    binaries (the stages are kwok's own defaults: kwok itself starts with none, only kwokctl adds them)."""
    share.mkdir(parents=True, exist_ok=True)
    kwok = module_source("kwok", "sigs.k8s.io/kwok") / "kustomize" / "stage"
    stages = [
        kwok / "node" / "fast" / "node-initialize.yaml",
        kwok / "node" / "heartbeat" / "node-heartbeat.yaml",
        kwok / "pod" / "fast" / "pod-ready.yaml",
        kwok / "pod" / "fast" / "pod-complete.yaml",
        kwok / "pod" / "fast" / "pod-delete.yaml",
        # Claims of the default StorageClass (below) bound to made-up volumes: StatefulSets' claims.
        *(
            kwok / "volume" / "fast" / f"{n}.yaml"
            for n in ("pvc-provision", "pv-bind", "pvc-delete", "pv-delete")
        ),
    ]
    (share / "kwok-stages.yaml").write_text(
        "\n---\n".join(p.read_text().strip().removeprefix("---").strip() for p in stages) + "\n"
    )
    shutil.copyfile(kwok / "volume" / "fast" / "storage-class.yaml", share / "storage-class.yaml")
    lws = module_source("lws", "sigs.k8s.io/lws") / "config"
    shutil.copyfile(
        lws / "crd" / "bases" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml", share / "lws-crd.yaml"
    )
    shutil.copyfile(lws / "webhook" / "manifests.yaml", share / "lws-webhooks.yaml")
    (share / "complete").write_text("")


# ---------------------------------------------------------------------------------------------------------
# Certificates


def _certs(pki: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    files: dict[str, Path] = {}

    def write_key(name, key):
        path = pki / f"{name}.key"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        files[f"{name}.key"] = path

    def write_cert(name, cert):
        path = pki / f"{name}.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.crt"] = path

    def name_of(cn, org=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def key_usage(ca: bool):
        flags = dict.fromkeys(
            (
                "content_commitment",
                "key_encipherment",
                "data_encipherment",
                "key_agreement",
                "encipher_only",
                "decipher_only",
            ),
            False,
        )
        return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **flags)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name_of("inference-graph-test-ca"))
        .issuer_name(name_of("inference-graph-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_key("ca", ca_key)
    write_cert("ca", ca)

    def leaf(name, cn, org=None, server=False, client=False):
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name_of(cn, org))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if server:
            sans = [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(next(ipaddress.ip_network(SERVICE_CIDR).hosts())),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        write_key(name, key)
        write_cert(name, builder.sign(ca_key, hashes.SHA256()))

    leaf("serving", "kube-apiserver", server=True)  # kube-apiserver and the LWS webhook server
    leaf("admin", "admin", "system:masters", client=True)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key("sa", sa_key)
    pub = pki / "sa.pub"
    pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    files["sa.pub"] = pub
    return files


def kubeconfig(path: Path, server: str, pki: Path) -> None:
    import base64

    def b64(name):
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "inference-graph-test",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [
            {"name": "inference-graph-test", "context": {"cluster": "inference-graph-test", "user": "admin"}}
        ],
        "current-context": "inference-graph-test",
    }
    path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
    path.chmod(0o600)


# ---------------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


class Cluster:
    def __init__(self, cache: Path, state_dir: Path = STATE_DIR):
        self.cache = cache
        self.bin = cache / "bin"
        self.share = cache / "share"
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs = self.dir / "logs"
        self.kubeconfig = self.dir / "kubeconfig"
        self.state: dict = {"processes": {}, "ports": {}, "dir": str(self.dir)}

    def save(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(self.state, indent=1) + "\n")

    def start(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=self.state["tmp"],
        )
        log.close()
        self.state["processes"][name] = proc.pid  # its own session: pid == process group id
        self.save()
        return proc

    def wait_for(self, name: str, proc: subprocess.Popen, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            try:
                if check():
                    return
            except (OSError, ssl.SSLError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not ready within {timeout:.0f} s:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def https_ok(self, port: int, path: str, client: bool = True) -> bool:
        pki = Path(self.state["tmp"]) / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if client:
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=2) as r:
            return r.status == 200

    def up(self, nodes: int) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="ig-cluster-"))
        self.state["tmp"] = str(tmp)
        self.state["cache"] = str(self.cache)
        self.save()
        pki = tmp / "pki"
        _certs(pki)
        ports = self.state["ports"]
        for name in (
            "etcd",
            "etcd-peer",
            "apiserver",
            "controller-manager",
            "scheduler",
            "kwok",
            "lws-webhook",
            "lws-health",
        ):
            ports[name] = free_port()
        t0 = time.monotonic()

        etcd = self.start(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=default",
                f"--data-dir={tmp / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
                f"--initial-cluster=default=http://127.0.0.1:{ports['etcd-peer']}",
                "--unsafe-no-fsync",  # a test cluster's data lives as long as the cluster
                "--log-level=warn",
            ],
        )

        def etcd_ok():
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['etcd']}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"

        self.wait_for("etcd", etcd, etcd_ok, 30)

        server = f"https://127.0.0.1:{ports['apiserver']}"
        apiserver = self.start(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                # As hardened clusters (OpenShift) do: setting blockOwnerDeletion needs update on the
                # owner's finalizers, which the chart's RBAC must then grant the operator.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # The `kubernetes` Service's Endpoints may not hold a loopback address: no reconciler.
                "--endpoint-reconciler-type=none",
            ],
        )
        self.wait_for("kube-apiserver", apiserver, lambda: self.https_ok(ports["apiserver"], "/readyz"), 90)
        kubeconfig(self.kubeconfig, server, pki)
        admin = str(self.kubeconfig)

        def component(name: str) -> list[str]:  # kube-controller-manager and kube-scheduler, as the admin
            return [
                str(self.bin / name),
                *(
                    f"--{flag}={admin}"
                    for flag in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")
                ),
                "--bind-address=127.0.0.1",
                f"--secure-port={ports[name.removeprefix('kube-')]}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                "--leader-elect=false",
            ]

        cm = self.start(
            "kube-controller-manager",
            [
                *component("kube-controller-manager"),
                "--controllers=*",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
            ],
        )
        sched = self.start("kube-scheduler", component("kube-scheduler"))
        kwok = self.start(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={admin}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--config={self.share / 'kwok-stages.yaml'}",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{ports['kwok']}",
            ],
        )
        self.kubectl("apply", "-f", str(self.share / "storage-class.yaml"))
        lws = self.start_lws(pki, admin)

        self.wait_for(
            "kube-controller-manager",
            cm,
            lambda: self.https_ok(ports["controller-manager"], "/healthz", False),
            60,
        )
        self.wait_for(
            "kube-scheduler", sched, lambda: self.https_ok(ports["scheduler"], "/healthz", False), 60
        )
        self.create_nodes(nodes)
        self.wait_for("kwok", kwok, lambda: self.nodes_ready(nodes), 60)
        self.wait_for("lws-controller", lws, lambda: self.lws_ready(), 60)
        # Pods need the namespace's `default` ServiceAccount, which the controller-manager creates.
        self.wait_for(
            "kube-controller-manager",
            cm,
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            60,
        )
        self.state["started_s"] = round(time.monotonic() - t0, 1)
        self.save()
        link = self.dir / "bin"  # kubectl, helm, ... of the pinned versions
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(self.bin)

    def start_lws(self, pki: Path, admin: str) -> subprocess.Popen:
        """The LWS controller out of the cluster; its webhooks on loopback, registered by URL with our CA."""
        import base64

        ports = self.state["ports"]
        certdir = Path(self.state["tmp"]) / "lws-certs"
        certdir.mkdir()
        shutil.copyfile(pki / "serving.crt", certdir / "tls.crt")
        shutil.copyfile(pki / "serving.key", certdir / "tls.key")
        config = Path(self.state["tmp"]) / "lws-config.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "config.lws.x-k8s.io/v1alpha1",
                    "kind": "Configuration",
                    "leaderElection": {"leaderElect": False},
                    "internalCertManagement": {"enable": False},
                    "webhook": {"host": "127.0.0.1", "port": ports["lws-webhook"], "certDir": str(certdir)},
                    "metrics": {"bindAddress": "0"},
                    "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['lws-health']}"},
                }
            )
        )
        self.kubectl("apply", "--server-side", "-f", str(self.share / "lws-crd.yaml"))
        self.kubectl("create", "namespace", "lws-system")

        import yaml  # PyYAML comes with the project's dependencies

        ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
        docs = []
        for doc in (self.share / "lws-webhooks.yaml").read_text().split("\n---"):
            obj = yaml.safe_load(doc)
            if not obj:
                continue
            obj["metadata"]["name"] = "lws-" + obj["metadata"]["name"]
            for hook in obj["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {
                    "url": f"https://127.0.0.1:{ports['lws-webhook']}{path}",
                    "caBundle": ca,
                }
                if hook["rules"][0]["resources"] == ["pods"]:
                    # As LWS's own kustomize patches do: only pods of a LeaderWorkerSet go through it.
                    hook["objectSelector"] = {
                        "matchExpressions": [
                            {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}
                        ]
                    }
            docs.append(obj)
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        )
        return self.start(
            "lws-controller",
            [
                str(self.bin / "lws-controller"),
                f"--kubeconfig={admin}",
                f"--config={config}",
            ],
        )

    def lws_ready(self) -> bool:
        ports = self.state["ports"]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['lws-health']}/readyz", timeout=2) as r:
            if r.status != 200:
                return False
        with socket.create_connection(("127.0.0.1", ports["lws-webhook"]), timeout=2):
            return True

    def create_nodes(self, count: int) -> None:
        items = []
        for i in range(count):
            name = f"gpu-node-{i}"
            capacity = {
                "cpu": "128",
                "memory": "2Ti",
                "pods": "250",
                "ephemeral-storage": "2Ti",
                GPU_RESOURCE: "8",
                RDMA_RESOURCE: "8",
            }
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "type": "kwok",
                            "node.kubernetes.io/instance-type": "fake-8xh100",
                            "topology.kubernetes.io/zone": "zone-a",
                            "nvidia.com/gpu.present": "true",
                            "nvidia.com/gpu.count": "8",
                            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                            "nvidia.com/gpu.memory": "81559",
                        },
                    },
                    "spec": {},
                    "status": {
                        "capacity": capacity,
                        "allocatable": capacity,
                    },
                }
            )
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )

    def nodes_ready(self, count: int) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        ready = [
            n
            for n in json.loads(out.stdout)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) >= count


def load_state(state_dir: Path = STATE_DIR) -> dict | None:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def stop(state: dict, quiet: bool = False) -> None:
    """Stop every process group: the clients, then kube-apiserver, then etcd; each wave gets SIGTERM and,
    after 5 s, SIGKILL. Then remove the temporary data (etcd's data, certificates, configs)."""
    groups = state.get("processes", {})
    last = ("kube-apiserver", "etcd")
    waves = [[n for n in groups if n not in last]] + [[n] for n in last if n in groups]
    for wave in waves:
        for name in wave:
            try:
                os.killpg(groups[name], signal.SIGTERM)
            except ProcessLookupError:
                pass
        for sig, grace in ((signal.SIGKILL, 5.0), (None, 5.0)):
            deadline = time.monotonic() + grace
            while any(group_members(groups[n]) for n in wave) and time.monotonic() < deadline:
                time.sleep(0.05)
            for name in wave:
                if group_members(groups[name]):
                    if sig is None:
                        print(
                            f"cluster: process group {groups[name]} ({name}) is still there", file=sys.stderr
                        )
                        continue
                    if not quiet:
                        print(f"cluster: {name} did not stop within 5 s of SIGTERM: SIGKILL", file=sys.stderr)
                    try:
                        os.killpg(groups[name], sig)
                    except ProcessLookupError:
                        pass
    tmp = state.get("tmp")
    if tmp and Path(tmp).name.startswith("ig-cluster-"):
        shutil.rmtree(tmp, ignore_errors=True)
    for name in ("state.json", "kubeconfig", "bin"):
        (Path(state["dir"]) / name).unlink(missing_ok=True)


def cmd_up(args) -> int:
    state = load_state()
    if state:
        if all(alive(pid) for pid in state["processes"].values()):
            print(f"cluster: already running ({STATE_DIR / 'kubeconfig'})", file=sys.stderr)
            print_exports(Path(state["cache"]))
            return 0
        print("cluster: a previous cluster is half gone; stopping what is left of it", file=sys.stderr)
        stop(state)
    if os.environ.get("IG_CLUSTER_BUILD") == "0" and missing(cache_dir()):
        sys.exit(f"cluster: binaries not built ({cache_dir()}) and IG_CLUSTER_BUILD=0")
    cache = build()
    cluster = Cluster(cache)
    try:
        cluster.up(args.nodes)
    except BaseException as e:
        print(f"cluster: start failed: {e}", file=sys.stderr)
        stop(cluster.state, quiet=True)
        return 1
    print(
        f"cluster: up in {cluster.state['started_s']} s: {args.nodes} fake GPU nodes, API server "
        f"https://127.0.0.1:{cluster.state['ports']['apiserver']}, logs in {cluster.logs}",
        file=sys.stderr,
    )
    print_exports(cache)
    return 0


def print_exports(cache: Path) -> None:
    print(f"export KUBECONFIG={STATE_DIR / 'kubeconfig'}")
    print(f"export PATH={STATE_DIR / 'bin'}:$PATH  # kubectl, helm, ... of the pinned versions")


def cmd_down(args) -> int:
    state = load_state()
    if not state:
        print("cluster: not running")
        return 0
    stop(state)
    print("cluster: stopped; temporary data removed")
    return 0


def cmd_status(args) -> int:
    state = load_state()
    if not state:
        print("cluster: not running")
        return 1
    ok = True
    for name, pid in state["processes"].items():
        up = alive(pid)
        ok &= up
        print(f"{name:24} pid {pid:<8} {'running' if up else 'GONE'}")
    print(f"ports: {json.dumps(state['ports'])}")
    print(f"kubeconfig: {STATE_DIR / 'kubeconfig'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--nodes", type=int, default=int(os.environ.get("IG_CLUSTER_NODES", "4")))
    sub.add_parser("down")
    sub.add_parser("status")
    sub.add_parser("build")
    sub.add_parser("pin")
    sub.add_parser("cache-dir")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        print(build())
        return 0
    if args.cmd == "pin":
        pin()
        return 0
    if args.cmd == "cache-dir":
        print(cache_dir())
        return 0 if not missing(cache_dir()) else 1
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
