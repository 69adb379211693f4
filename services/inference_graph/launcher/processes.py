"""Child processes that cannot outlive the launcher.

Each child gets its own session (process group), so a terminal's Ctrl-C reaches
only the launcher, which then stops children in order; and the kernel sends the
child SIGKILL if the launcher itself dies (PR_SET_PDEATHSIG), so even a killed
launcher leaves no orphans. Stopping signals the whole group, which also reaches
the engine's own helper processes.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL this child when its parent exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
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
