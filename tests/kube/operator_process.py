"""The operator (``python -m inference_graph_operator``) as a subprocess of a test, against the session
cluster: the environment is the test's choice (the chart's, as installed, or a few settings), the
kubeconfig usually a ServiceAccount's, and its log is kept for failure messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class Operator:
    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str]):
        self.kubeconfig, self.log_path, self.env = kubeconfig, log_path, env
        self.process: subprocess.Popen | None = None

    def start(self, resync_seconds: float = 300) -> Operator:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IG_") and k != "KUBECONFIG"},
            **self.env,
            "KUBECONFIG": str(self.kubeconfig),
            "IG_OPERATOR_LIVENESS": "",  # tests run side by side: no fixed port
            # 300: repairs must come from watch events, not from the periodic resync
            "IG_RESYNC_SECONDS": str(resync_seconds),
        }
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "inference_graph_operator"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no cleanup, whatever it was doing (a crash, an evicted pod)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
