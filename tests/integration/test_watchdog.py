"""The watchdog with real processes: nothing of the app survives, then it reports ready."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from vigil.supervisor.process import group_alive
from vigil.supervisor.watchdog import Watchdog


class Reports:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def watchdog(self, group: str, kind: str, detail: str) -> None:
        self.seen.append((group, kind))


async def test_it_kills_survivors_holds_until_the_ban_ends_and_reports_ready() -> None:
    # A process group whose leader is gone but whose child lives on, ignoring SIGTERM.
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    leader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {child!r}])",
        start_new_session=True,
    )
    await leader.wait()
    pgid = leader.pid
    deadline = time.monotonic() + 5
    while not group_alive(pgid):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    reports = Reports()
    ban_ends = time.time() + 1.5
    dog = Watchdog("web1", pgid, reports, lambda: ban_ends, lambda: False)
    await asyncio.wait_for(dog.run("app failed"), 10)
    assert reports.seen == [("web1", "started"), ("web1", "cleaned"), ("web1", "ready")]
    assert not group_alive(pgid)
    assert time.time() >= ban_ends


async def test_it_stops_when_the_group_runs_here_again() -> None:
    reports = Reports()
    dog = Watchdog("web1", None, reports, lambda: time.time() + 600, lambda: True)
    await asyncio.wait_for(dog.run("app shut down"), 5)
    assert reports.seen == [("web1", "started")]
    assert os.getpid()  # nothing of ours was touched
