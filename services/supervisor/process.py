"""One group's application process: started in its own process group, stopped as a whole.

(none) --start--> running --exit--> exited        (reported as app failed)
                     |
                     +--stop--> SIGTERM to the group --stop_timeout--> SIGKILL to the group
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import string
from collections.abc import Mapping
from pathlib import Path


def render_command(command: str, env: Mapping[str, str]) -> list[str]:
    """``${VIGIL_ADDRESS}`` and friends substituted, then split like a shell would (no shell)."""
    return shlex.split(string.Template(command).safe_substitute(env))


class AppProcess:
    def __init__(self, proc: asyncio.subprocess.Process, group: str, epoch: int) -> None:
        self.proc = proc
        self.group = group
        self.epoch = epoch
        self.stopping = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls, group: str, epoch: int, command: str, env: Mapping[str, str], log_path: Path
    ) -> AppProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = render_command(command, env)
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: we stop all of it, not just it
            )
        return cls(proc, group, epoch)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after ``timeout``; returns the exit code."""
        self.stopping = True
        self._signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            return await self.proc.wait()
        finally:
            self._signal(signal.SIGKILL)  # reap stragglers the leader left in its group

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
