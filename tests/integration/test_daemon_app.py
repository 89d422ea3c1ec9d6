"""A daemon that forks (start / stop / check), run by a group's life with real processes:
started, watched through its check, restarted when it dies, stopped by its stop command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from vigil.supervisor.lifecycle import GroupRun
from vigil.supervisor.restarts import RestartTracker
from vigil.wire.cluster import App, Group, Restart


class StepLog:
    """A Reporter for one GroupRun: remembers the steps in order, wakes waiters."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.changed = asyncio.Event()

    def note(self, step: str) -> None:
        self.steps.append(step)
        self.changed.set()

    async def wait(self, step: str, count: int = 1, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while self.steps.count(step) < count:
                self.changed.clear()
                await self.changed.wait()

    async def app_started(self, group: str, epoch: int, pid: int) -> None:
        self.note("app_started")

    async def monitors_started(self, group: str, epoch: int, names: list[str]) -> None:
        self.note("monitors_started")

    async def monitors_stopped(self, group: str, epoch: int) -> None:
        self.note("monitors_stopped")

    async def service_up(self, group: str, epoch: int) -> None:
        self.note("service_up")

    async def app_failed(
        self, group: str, epoch: int, code: int | None, reason: str, final: bool
    ) -> None:
        self.note("app_failed_final" if final else "app_failed")

    async def app_stopped(self, group: str, epoch: int, code: int | None) -> None:
        self.note("app_stopped")

    async def stop_failed(self, group: str, epoch: int, reason: str) -> None:
        self.note("stop_failed")


def daemon_group(tmp: Path) -> Group:
    pidfile = tmp / "daemon.pid"
    sleeper = f'{sys.executable} -c "import time; time.sleep(120)"'
    return Group(
        name="db",
        address="127.0.0.1/8",
        preferred="n1",
        app=App(
            # forks into the background like pg_ctl start, leaving a pid file behind
            start=f"sh -c '{sleeper} > /dev/null 2>&1 & echo $! > {pidfile}'",
            stop=f"sh -c 'kill $(cat {pidfile})'",
            check=f"sh -c 'kill -0 $(cat {pidfile})'",
            start_timeout=5.0,
            stop_timeout=3.0,
        ),
        restart=Restart(max=3, window=60, backoff=0.05),
    )


def pid_of(tmp: Path) -> int:
    return int((tmp / "daemon.pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_daemon_start_check_restart_and_stop(tmp_path: Path) -> None:
    group = daemon_group(tmp_path)
    env = {**os.environ, "VIGIL_ADDRESS": "127.0.0.1", "VIGIL_GROUP": "db"}
    steps = StepLog()
    run = GroupRun(group, 1, env, tmp_path / "db.log", steps, RestartTracker(group.restart))
    task = asyncio.create_task(run.main())
    try:
        await steps.wait("service_up")
        assert steps.steps == ["app_started", "monitors_started", "service_up"]
        first = pid_of(tmp_path)
        assert alive(first)
        os.kill(first, 9)  # the daemon dies: its check fails (3 times), it is restarted
        await steps.wait("service_up", 2)
        second = pid_of(tmp_path)
        assert second != first and alive(second)
        assert "app_failed" in steps.steps
        await run.halt()
        await asyncio.wait_for(task, 15)
        assert steps.steps[-2:] == ["monitors_stopped", "app_stopped"]
        deadline = asyncio.get_running_loop().time() + 5
        while alive(second):  # the stop command did it, not us
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(OSError, ValueError):  # leave no daemon behind, whatever failed
            os.kill(pid_of(tmp_path), 9)
