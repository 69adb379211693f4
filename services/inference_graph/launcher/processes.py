"""Child processes that cannot outlive the launcher.

Each child gets its own session (process group), so a terminal's Ctrl-C reaches
only the launcher, which then stops children in order; and the kernel sends the
child SIGKILL if the launcher itself dies (PR_SET_PDEATHSIG, set by the same exec
wrapper the embedded servers use: a ``preexec_fn`` is unsafe in a process with
threads, and the launcher has some), so even a killed launcher leaves no orphans. Stopping signals the whole group, which also reaches
the engine's own helper processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from ..runtime.embedded import with_pdeathsig


async def spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *with_pdeathsig(argv),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


async def stop_process(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the child's group, wait up to ``grace`` seconds, then SIGKILL it."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            pass
    # The leader may be gone while its group (e.g. an engine helper) lives on.
    signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def pump_lines(stream: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    """Forward a child's output line by line, so logs of many children interleave cleanly."""
    while line := await stream.readline():
        emit(line.decode(errors="replace").rstrip("\n"))
