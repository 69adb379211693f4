"""The launcher as a user runs it: errors for what cannot run here, and no orphans."""

from __future__ import annotations

import subprocess
import sys

import pytest

from inference_graph.runtime.embedded import free_port
from support import eventually_sync

from .conftest import TINY_OVERRIDES
from .graph import REPO, LocalGraph, alive, descendants

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_tensor_parallel_on_cpu_is_a_clear_error():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference_graph.launcher",
            "serve",
            "configs/agg.yaml",
            "--set",
            "services.decode.tensorParallelSize=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "spec.services.decode.tensorParallelSize" in result.stderr
    assert "CPU" in result.stderr


@pytest.mark.vllm  # the graph's decode worker loads the tiny model in vLLM
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stopping_the_launcher_leaves_no_process(tmp_path, tiny_model, how):
    # No NATS_SERVER / ETCD_ENDPOINTS: the launcher starts embedded servers too.
    graph = LocalGraph(
        "configs/agg.yaml",
        free_port(),
        [f"metadata.name=stop-{how}", *TINY_OVERRIDES],
        {},
        tmp_path / "launcher.log",
    )
    graph.wait_ready()
    processes = descendants(graph.proc.pid)
    assert len(processes) >= 5, graph.log()  # nats-server, etcd, frontend, processor, decode
    if how == "sigterm":
        assert graph.stop() == 0, graph.log()[-3000:]
    else:
        graph.proc.kill()  # the launcher cannot clean up: the kernel must take its children
        graph.stop()
    eventually_sync(
        lambda: [p for p in processes if alive(p)],
        until=lambda left: not left,
        timeout=30,
        what="every process of the graph to exit",
    )
