"""Processes of a group's application: started in their own process group, stopped as a whole.

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


async def spawn(
    command: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    user: str | None = None,
    cwd: str | None = None,
) -> asyncio.subprocess.Process:
    """Start ``command`` in a new session (its own process group), output appended to the log.
    With ``user`` it never runs as root: the kernel switches uid/gid before exec."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = render_command(command, env)
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            user=user,
            group=_group_of(user),
            extra_groups=[] if user else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


def _group_of(user: str | None) -> int | None:
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


def signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal a whole process group; False when nothing of it is left."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Is any process of the group still there (zombies of ours aside)?"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def run_to_end(
    command: str,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    *,
    user: str | None = None,
    cwd: str | None = None,
) -> int | None:
    """Run a hook or a daemon's start/stop/check to its end; None if it timed out (its whole
    process group is then killed)."""
    proc = await spawn(command, env, log_path, user=user, cwd=cwd)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None


class AppProcess:
    """A foreground app: we are its parent, so its exit is known the moment it happens."""

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
        cls,
        group: str,
        epoch: int,
        command: str,
        env: Mapping[str, str],
        log_path: Path,
        *,
        user: str | None = None,
        cwd: str | None = None,
    ) -> AppProcess:
        return cls(await spawn(command, env, log_path, user=user, cwd=cwd), group, epoch)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after ``timeout``; returns the exit code."""
        self.stopping = True
        signal_group(self.proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
        except TimeoutError:
            signal_group(self.proc.pid, signal.SIGKILL)
            return await self.proc.wait()
        finally:
            with contextlib.suppress(Exception):
                signal_group(self.proc.pid, signal.SIGKILL)  # stragglers the leader left behind

    async def survivors(self, grace: float = 1.0) -> bool:
        """Is anything of the group still alive ``grace`` seconds after SIGKILL? (A killed
        process takes a moment to exit, and a child of the app is not ours to reap.)"""
        deadline = asyncio.get_running_loop().time() + grace
        while group_alive(self.proc.pid):
            if asyncio.get_running_loop().time() > deadline:
                return True
            signal_group(self.proc.pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
        return False
