"""Section 4: no false failover under load.

A lab with default timing (three nodes, one group each) runs for N minutes while a busy loop,
pinned with taskset to the last CPU, saturates that core. Counted from the events: every
node_lost (each one is spurious: nothing failed), and every other placement or address change.
The client keeps probing ``web1``; the observer records the largest gap between two heartbeats
of a node as it saw them (an upper bound: the observer runs on the loaded machine too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from .failover import TIMINGS, LabBench, Log
from .machine import loadavg
from .procstat import Window, cpu_count

PROBE_SLICE = 100.0  # seconds per probe process (the lab's probe stops itself after 120 s)


@dataclass
class LoadResult:
    timing_name: str
    duration_s: float
    busy_cpu: int
    busy_command: str
    busy_pct: float = 0.0
    events: dict[str, int] = field(default_factory=dict)
    node_lost: int = 0
    max_gap_s: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    load_end: str = ""


async def run_load(prefix: str, timing_name: str, seconds: float, log: Log) -> LoadResult:
    cpu = max(os.sched_getaffinity(0))
    busy_argv = ["taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"]
    result = LoadResult(timing_name, seconds, cpu, shlex.join(busy_argv))
    async with LabBench(prefix, TIMINGS[timing_name], log, nodes=3, groups=3) as lb:
        last: dict[str, float] = {}
        gaps: dict[str, float] = {}

        async def on_beat(msg: Msg) -> None:
            node = msg.subject.rpartition(".")[2]
            now = time.monotonic()
            if node in last:
                gaps[node] = max(gaps.get(node, 0.0), now - last[node])
            last[node] = now

        await asyncio.sleep(2.0)
        sub = await lb.bus.nc.subscribe(lb.bus.subjects.all_heartbeats, cb=on_beat)
        busy = subprocess.Popen(  # noqa: ASYNC220 - starting it is instant; it is never awaited
            busy_argv, stdin=subprocess.DEVNULL, start_new_session=True
        )
        window = Window([busy.pid])
        t0 = time.time()
        log(
            f"  load: busy loop pid {busy.pid} on CPU {cpu} of {cpu_count()}, "
            f"{seconds:.0f} s with {timing_name} timing"
        )
        failed: Counter[str] = Counter()
        try:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                probe = lb.probe()
                await asyncio.sleep(min(PROBE_SLICE, left))
                await lb.stop_probe(probe)
                result.attempts += len(probe.answers)
                failed.update(a.text for a in probe.answers if not a.ok)
                lost = lb.recorder.count(t0).get("NodeLost", 0)
                log(
                    f"  load: {seconds - max(0.0, end - time.monotonic()):.0f}/{seconds:.0f} s, "
                    f"node_lost so far {lost}, failed probes {sum(failed.values())}"
                )
        finally:
            usage = window.usage().get(busy.pid)
            result.busy_pct = usage.cpu_pct if usage else 0.0
            with contextlib.suppress(ProcessLookupError):
                os.kill(busy.pid, signal.SIGKILL)
            busy.wait()
            await sub.unsubscribe()
        result.events = dict(lb.recorder.count(t0))
        result.node_lost = result.events.get("NodeLost", 0)
        result.max_gap_s = dict(sorted(gaps.items()))
        result.failed = dict(failed)
        result.load_end = loadavg()
    return result
