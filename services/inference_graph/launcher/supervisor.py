"""Keeps each role's replicas running as child processes.

A replica that exits on its own is restarted with exponential backoff; one that
crashes ``max_restarts`` times within ``restart_window`` seconds fails the whole
graph, because a crash loop is a configuration problem a restart cannot fix.
Replica counts can change at run time (``set_replicas``), which is how the
planner will scale roles locally.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.instances import RoleInstance
from ..settings import FIXED, Env
from .processes import pump_lines, spawn, stop_process

log = logging.getLogger(__name__)


class CrashLoopError(RuntimeError):
    def __init__(self, replica: str, restarts: int, window: float):
        super().__init__(f"{replica} exited {restarts} times within {window:.0f} s; see its log above")
        self.replica = replica


@dataclass
class Replica:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    exits: deque[float] = field(default_factory=deque)
    stopping: bool = False
    task: asyncio.Task | None = None


class Supervisor:
    def __init__(self, base_env: dict[str, str], *, max_restarts: int = 3, restart_window: float = 60.0):
        self._base_env = base_env
        self._max_restarts = max_restarts
        self._window = restart_window
        self._replicas: dict[str, list[Replica]] = {}
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def failed(self) -> asyncio.Future[None]:
        """Resolves with an exception when a replica is in a crash loop."""
        return self._failed

    def pids(self) -> list[int]:
        return [r.proc.pid for group in self._replicas.values() for r in group if r.proc]

    async def set_replicas(
        self, instance: RoleInstance, count: int, env_of: Callable[[int], dict[str, str]] | None = None
    ) -> None:
        """Start or stop replicas of ``instance.role`` until ``count`` run; ``env_of(index)``
        adds environment for one replica."""
        group = self._replicas.setdefault(instance.role.value, [])
        while len(group) < count:
            index = len(group)
            extra = env_of(index) if env_of else {}
            env = {**self._base_env, **instance.env, Env.IG_REPLICA_INDEX: str(index), **extra}
            replica = Replica(f"{instance.role.value}-{index}", instance.argv(sys.executable), env)
            group.append(replica)
            replica.task = asyncio.create_task(self._keep_running(replica), name=replica.name)
        while len(group) > count:
            await self._stop_replica(group.pop())

    async def stop_all(self, order: list[str], grace: float) -> None:
        """Stop roles in ``order`` (callers first, so nothing new reaches a stopping worker)."""
        for role in order + [r for r in self._replicas if r not in order]:
            group = self._replicas.pop(role, [])
            await asyncio.gather(*(self._stop_replica(r, grace) for r in group))

    async def _stop_replica(self, replica: Replica, grace: float = FIXED.drain_seconds) -> None:
        replica.stopping = True
        if replica.proc is not None:
            await stop_process(replica.proc, grace)
        if replica.task is not None:
            replica.task.cancel()
            await asyncio.gather(replica.task, return_exceptions=True)

    async def _keep_running(self, replica: Replica) -> None:
        backoff = 1.0
        while not replica.stopping:
            started = time.monotonic()
            code = await self._run_once(replica)
            if replica.stopping:
                return
            log.warning("%s exited with code %s", replica.name, code)
            if self._crash_looping(replica):
                if not self._failed.done():
                    self._failed.set_exception(CrashLoopError(replica.name, len(replica.exits), self._window))
                return
            backoff = 1.0 if time.monotonic() - started > self._window else min(backoff * 2, 30.0)
            await asyncio.sleep(backoff)  # restart backoff, not synchronisation

    async def _run_once(self, replica: Replica) -> int:
        replica.proc = await spawn(replica.argv, replica.env)
        prefix = f"[{replica.name}] "
        assert replica.proc.stdout is not None
        await pump_lines(replica.proc.stdout, lambda line: print(prefix + line, flush=True))
        return await replica.proc.wait()

    def _crash_looping(self, replica: Replica) -> bool:
        now = time.monotonic()
        replica.exits.append(now)
        while replica.exits and now - replica.exits[0] > self._window:
            replica.exits.popleft()
        return len(replica.exits) >= self._max_restarts
