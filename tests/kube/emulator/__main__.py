"""Run the API emulator in the foreground for manual work, e.g. `make operator` against it:

    python -m tests.kube.emulator --kubeconfig /tmp/emulator.kubeconfig [--port 8001] [-f crds/inferencegraph.yaml]
    KUBECONFIG=/tmp/emulator.kubeconfig kubectl get ig

State lives in memory and is gone when it stops (Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import yaml

from .server import EmulatorServer


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kube.emulator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--kubeconfig", type=Path, default=Path("emulator.kubeconfig"), help="where to write it"
    )
    parser.add_argument(
        "-f", "--file", type=Path, action="append", default=[], help="manifests to create at start"
    )
    args = parser.parse_args()
    stop = threading.Event()
    with EmulatorServer(port=args.port) as server:
        for path in args.file:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    create(server, doc)
        server.write_kubeconfig(args.kubeconfig)
        print(f"Kubernetes API emulator on {server.url}; KUBECONFIG={args.kubeconfig.resolve()}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


def create(server: EmulatorServer, doc: dict) -> None:
    api = server.api
    rtype = api.registry.by_kind(doc["apiVersion"], doc["kind"])
    if rtype is None:
        raise SystemExit(f"{doc['apiVersion']}/{doc['kind']}: not served (apply its CRD first)")
    api.create(rtype, doc["metadata"].get("namespace", "default") if rtype.namespaced else None, doc)


if __name__ == "__main__":
    main()
