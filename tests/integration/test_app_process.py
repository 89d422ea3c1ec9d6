"""Real processes: an app is stopped as a whole process group, SIGKILLed after stop_timeout."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from vigil.supervisor.process import AppProcess

STUBBORN = (
    f'{sys.executable} -c "import signal, subprocess, sys, time; '
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    'print(child.pid, flush=True); time.sleep(60)"'
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().split()
    return stat[2] != "Z"


async def test_stop_kills_an_app_that_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    app = await AppProcess.start("g", 1, STUBBORN, dict(os.environ), log)
    deadline = time.monotonic() + 10
    while not log.read_text().strip():
        assert time.monotonic() < deadline, "the app never started its child"
        await asyncio.sleep(0.01)
    child = int(log.read_text().split()[0])
    started = time.monotonic()
    code = await app.stop(timeout=0.3)
    took = time.monotonic() - started
    assert code == -9  # SIGTERM was ignored, SIGKILL was not
    assert took >= 0.3
    deadline = time.monotonic() + 5
    while alive(child):
        assert time.monotonic() < deadline, "a child of the app survived its stop"
        await asyncio.sleep(0.01)


async def test_environment_reaches_the_app(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    env = {**os.environ, "VIGIL_GROUP": "web1", "VIGIL_ADDRESS": "10.213.0.101"}
    app = await AppProcess.start(
        "web1", 1, "sh -c 'echo $VIGIL_GROUP at ${VIGIL_ADDRESS}'", env, log
    )
    assert await app.wait() == 0
    assert log.read_text().strip() == "web1 at 10.213.0.101"
