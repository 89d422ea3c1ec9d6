"""The keeper's restart policy (pure) and one kept child (a real, tiny process)."""

from __future__ import annotations

import sys
import time

from vigil.lab.keeper import FIRST_DELAY, HEALTHY_AFTER, MAX_DELAY, Backoff, Kept


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_healthy_run() -> None:
    b = Backoff()
    delays = [b.after_exit(0.1) for _ in range(8)]
    assert delays[:3] == [FIRST_DELAY, 2 * FIRST_DELAY, 4 * FIRST_DELAY]
    assert max(delays) == MAX_DELAY and delays[-1] == MAX_DELAY
    assert b.after_exit(HEALTHY_AFTER) == FIRST_DELAY


def tick_until(kept: Kept, ok: object, timeout: float = 10.0) -> None:
    assert callable(ok)
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, kept.status()
        kept.tick(time.monotonic())
        time.sleep(0.01)


def test_a_child_that_exits_is_started_again_unless_held() -> None:
    kept = Kept("short", [sys.executable, "-c", "pass"])
    kept.start()
    tick_until(kept, lambda: kept.restarts >= 2)
    kept.hold()
    tick_until(kept, lambda: kept.proc is None)
    count = kept.restarts
    for _ in range(30):  # longer than the backoff: held means no restart
        kept.tick(time.monotonic())
        time.sleep(0.01)
    assert kept.restarts == count and kept.status()["held"] is True
    kept.release()
    tick_until(kept, lambda: kept.restarts == count + 1)
    kept.stop()
    assert kept.pid is None


def test_stop_terminates_a_running_child() -> None:
    kept = Kept("long", [sys.executable, "-c", "import time; time.sleep(60)"])
    kept.start()
    pid = kept.pid
    assert pid is not None
    kept.stop(grace=5)
    assert kept.pid is None and kept.held
