"""The watchdog: spawned on a node when a group's app fails or is shut down there.

    spawned --> cleaning: SIGKILL the app's process group until nothing of it is left
            --> holding:  the group stays in its safe state here (nothing of the app may come
                          back), checked every second
            --> ready:    the node may run the app again (no ban, or its failure timeout is
                          over): reported on the bus, for failback and the next failover

It stops early when the group runs on this node again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .process import group_alive, signal_group

CHECK_EVERY = 1.0


class WatchdogReporter(Protocol):
    async def watchdog(self, group: str, kind: str, detail: str) -> None: ...


@dataclass
class Watchdog:
    group: str
    pgid: int | None  # the app's process group (None: a daemon's, unknown to us)
    reporter: WatchdogReporter
    banned_until: Callable[[], float]  # unix time until which this node may not run the group
    running_again: Callable[[], bool]
    clean_within: float = 5.0

    async def run(self, reason: str) -> None:
        await self.reporter.watchdog(self.group, "started", reason)
        killed = await self.clean()
        if killed is None:
            await self.reporter.watchdog(
                self.group, "stop_failed", f"process group {self.pgid} survives SIGKILL"
            )
            return
        if killed:
            await self.reporter.watchdog(
                self.group, "cleaned", f"killed what was left of process group {self.pgid}"
            )
        while not self.running_again():
            if self.pgid is not None and group_alive(self.pgid):
                signal_group(self.pgid, signal.SIGKILL)  # hold the safe state
            if self.banned_until() <= time.time():
                await self.reporter.watchdog(self.group, "ready", "the app can run here again")
                return
            await asyncio.sleep(CHECK_EVERY)

    async def clean(self) -> bool | None:
        """True if it had to kill survivors, False if none were left, None if some resist."""
        if self.pgid is None or not group_alive(self.pgid):
            return False
        deadline = time.monotonic() + self.clean_within
        while group_alive(self.pgid):
            if time.monotonic() > deadline:
                return None
            signal_group(self.pgid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        return True
