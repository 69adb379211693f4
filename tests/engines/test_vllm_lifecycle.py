"""The engine core child (and its temp dir) goes with the process that started it, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from support import eventually_sync

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(120)]

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import psutil
    from inference_graph.engines.vllm_engine import VllmEngine

    async def main():
        engine = VllmEngine(sys.argv[1], max_model_len=256, kv_cache_gib=0.1)
        await engine.start()
        kids = [p.pid for p in psutil.Process().children(recursive=True)]
        print("READY", engine._tmpdir, *kids, flush=True)
        await asyncio.sleep(600)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_engine_core_dies_when_its_parent_is_killed(tiny_model_path, tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), tiny_model_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    kids: list[psutil.Process] = []
    try:

        def next_line() -> str:
            assert proc.poll() is None, "the engine exited before it was ready"
            return proc.stdout.readline()

        line = eventually_sync(
            next_line,
            until=lambda line: line.startswith("READY"),
            timeout=90,
            interval=0,
            what="the engine to start",
        )
        tmpdir, *pids = line.split()[1:]
        kids = [psutil.Process(int(pid)) for pid in pids]
        engine_core = [p for p in kids if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())]
        assert engine_core, [(p.pid, p.name()) for p in kids]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _gone, alive = psutil.wait_procs(engine_core, timeout=20)
        assert not alive, "the engine core outlived its parent"
        eventually_sync(  # the guard also removes the engine's private temp dir
            lambda: os.path.exists(tmpdir),
            until=lambda exists: not exists,
            timeout=10,
            what=f"{tmpdir} removed",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in kids:  # never leave an engine behind, whatever failed above
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
