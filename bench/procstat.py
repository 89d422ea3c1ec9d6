"""CPU time and resident memory of processes, from /proc (no psutil needed)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (children not included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based in proc(5))
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Usage:
    """CPU as a percentage of one core over the window, and RSS at its end."""

    cpu_pct: float
    rss_mib: float


class Window:
    """``w = Window(pids)`` ... later ``w.usage()``: CPU used between the two calls."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.cpu0 = {p: cpu_seconds(p) for p in self.pids}

    def usage(self) -> dict[int, Usage]:
        dt = time.monotonic() - self.t0
        out: dict[int, Usage] = {}
        for pid in self.pids:
            c0, c1, rss = self.cpu0.get(pid), cpu_seconds(pid), rss_kib(pid)
            if c0 is None or c1 is None or rss is None:
                continue
            out[pid] = Usage(100.0 * (c1 - c0) / dt, rss / 1024)
        return out


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
