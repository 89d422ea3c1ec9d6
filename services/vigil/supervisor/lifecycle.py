"""One group's life on this node: the run method, watching, restarts, the halt method.

run method:   [address already up] -> before_start -> app started -> healthy (monitors pass)
              -> monitors on -> service up
watching:     app exit (at once: we are its parent) | a monitor trips | halt asked
on failure:   monitors off, app's process group stopped, service down (failure), then the
              restart policy: start again after a back-off, or give up (the group fails over)
halt method:  monitors off -> app stopped (SIGTERM, SIGKILL after stop_timeout) -> after_stop
              -> app stopped reported (the address service then releases the address, and
              service down follows its release)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vigil.wire.cluster import Group, Monitor

from . import monitors as mon
from .process import AppProcess, run_to_end
from .restarts import GiveUp, RestartTracker

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """What a group's run tells the world (the supervisor turns these into events)."""

    async def app_started(self, group: str, epoch: int, pid: int) -> None: ...
    async def monitors_started(self, group: str, epoch: int, names: list[str]) -> None: ...
    async def monitors_stopped(self, group: str, epoch: int) -> None: ...
    async def service_up(self, group: str, epoch: int) -> None: ...
    async def app_failed(
        self, group: str, epoch: int, code: int | None, reason: str, final: bool
    ) -> None: ...
    async def app_stopped(self, group: str, epoch: int, code: int | None) -> None: ...
    async def stop_failed(self, group: str, epoch: int, reason: str) -> None: ...


class StartFailed(Exception):
    pass


@dataclass
class GroupRun:
    group: Group
    epoch: int
    env: dict[str, str]
    log_path: Path
    reporter: Reporter
    tracker: RestartTracker
    halting: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "starting"
    app: AppProcess | None = None
    exit_code: int | None = None
    last_pgid: int | None = None  # the app's last process group, for the watchdog

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def address(self) -> str:
        return self.env["VIGIL_ADDRESS"]

    def checks(self) -> list[Monitor]:
        """The monitors, plus a daemon's own ``check`` (a daemon has no exit we can see)."""
        extra = []
        if self.group.app.is_daemon and self.group.app.check:
            extra.append(
                Monitor(
                    exec=self.group.app.check,
                    interval=1.0,
                    timeout=self.group.app.start_timeout,
                    failures=3,
                )
            )
        return [*self.group.monitors, *extra]

    # -- the whole life ------------------------------------------------------------------------
    async def main(self) -> None:
        try:
            while not self.halting.is_set():
                try:
                    await self.run_method()
                except StartFailed as exc:
                    await self.cleanup()
                    # A start that fails is not retried here: the next node is tried.
                    await self.give_up(f"start failed: {exc}", None)
                    break
                outcome = await self.watch()
                if outcome is None:
                    break  # halt asked
                code, reason = outcome
                await self.cleanup()
                decision = self.tracker.failed(time.monotonic())
                if isinstance(decision, GiveUp):
                    await self.give_up(f"{reason}; {decision.reason}", code)
                    break
                log.warning(
                    "%s failed (%s); restart %d in %.2fs",
                    self.name,
                    reason,
                    decision.attempt,
                    decision.delay,
                )
                self.state = "restarting"
                await self.reporter.app_failed(self.name, self.epoch, code, reason, False)
                await self.sleep_unless_halted(decision.delay)
        finally:
            if self.state not in ("stopped", "stop_failed"):
                await self.halt_method()

    async def give_up(self, reason: str, code: int | None) -> None:
        log.error("%s: giving up on this node: %s", self.name, reason)
        self.state = "given_up"
        await self.reporter.app_failed(self.name, self.epoch, code, reason, True)
        await self.halting.wait()  # hold the safe state until placement moves the group

    async def sleep_unless_halted(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: core/runner.stop_if_cancelled
                await self.halting.wait()

    async def command(self, command: str, timeout: float) -> int | None:
        """A hook or a daemon's start/stop/check, as the app's user, in its workdir."""
        app = self.group.app
        return await run_to_end(
            command, self.env, self.log_path, timeout, user=app.user, cwd=app.workdir
        )

    # -- run method ----------------------------------------------------------------------------
    async def run_method(self) -> None:
        app = self.group.app
        self.state = "starting"
        deadline = time.monotonic() + app.start_timeout
        if app.before_start:
            code = await self.command(app.before_start, app.start_timeout)
            if code != 0:
                raise StartFailed(f"before_start {'timed out' if code is None else f'exit {code}'}")
        if app.command is not None:
            try:
                self.app = await AppProcess.start(
                    self.name,
                    self.epoch,
                    app.command,
                    self.env,
                    self.log_path,
                    user=app.user,
                    cwd=app.workdir,
                )
            except (OSError, KeyError) as exc:
                raise StartFailed(f"cannot run {app.command.split()[0]}: {exc}") from None
            pid = self.app.pid
            self.last_pgid = pid
        else:
            assert app.start is not None
            code = await self.command(app.start, app.start_timeout)
            if code != 0:
                raise StartFailed(f"start {'timed out' if code is None else f'exit {code}'}")
            pid = 0
        await self.reporter.app_started(self.name, self.epoch, pid)
        checks = self.checks()
        if checks:
            remaining = max(0.1, deadline - time.monotonic())
            waiter = asyncio.ensure_future(mon.healthy(checks, self.address, self.env, remaining))
            exited = asyncio.ensure_future(self.app.wait()) if self.app else None
            done, _ = await asyncio.wait(
                [f for f in (waiter, exited) if f], return_when=asyncio.FIRST_COMPLETED
            )
            if exited is not None and exited in done:
                waiter.cancel()
                raise StartFailed(f"exited with {exited.result()} before it was healthy")
            if exited is not None:
                exited.cancel()
            if (reason := waiter.result()) is not None:
                raise StartFailed(reason)
        await self.reporter.monitors_started(
            self.name, self.epoch, [f"{m.kind} {m.target}" for m in checks]
        )
        self.state = "running"
        await self.reporter.service_up(self.name, self.epoch)

    # -- watching ------------------------------------------------------------------------------
    async def watch(self) -> tuple[int | None, str] | None:
        """Until the app fails (its exit code and why) or a halt is asked (None)."""
        waits: dict[asyncio.Future[object], str] = {
            asyncio.ensure_future(self.halting.wait()): "halt",
        }
        if self.app is not None:
            waits[asyncio.ensure_future(self.app.wait())] = "exit"
        checks = self.checks()
        if checks:
            waits[asyncio.ensure_future(mon.watch(checks, self.address, self.env))] = "monitor"
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        first = next(iter(done))
        kind = waits[first]
        if kind == "halt":
            return None
        if kind == "exit":
            code = first.result()
            assert isinstance(code, int)
            return code, f"exited with {code}"
        return None, f"monitor failed: {first.result()}"

    async def cleanup(self) -> None:
        """After a failure: nothing of the app may survive before it is started again."""
        await self.reporter.monitors_stopped(self.name, self.epoch)
        await self.stop_app()

    async def stop_app(self) -> str | None:
        """Stop the app; a reason if anything of it survived."""
        app = self.group.app
        if self.app is not None:
            self.exit_code = await self.app.stop(app.stop_timeout)
            survived = await self.app.survivors()
            self.app = None
            return "processes survived SIGKILL" if survived else None
        if app.is_daemon and app.stop and self.state != "given_up":
            deadline = time.monotonic() + app.stop_timeout
            code = await self.command(app.stop, app.stop_timeout)
            assert app.check is not None
            # A stop command may return before the daemon is gone: its check must fail within
            # stop_timeout for the stop to count.
            while await self.command(app.check, app.stop_timeout) == 0:
                if time.monotonic() > deadline:
                    why = "timed out" if code is None else f"exit {code}"
                    return f"stop {why}; check still passes after {app.stop_timeout:g}s"
                await asyncio.sleep(0.1)
        return None

    # -- halt method ---------------------------------------------------------------------------
    async def halt(self) -> None:
        self.halting.set()

    async def halt_method(self) -> None:
        self.state = "stopping"
        await self.reporter.monitors_stopped(self.name, self.epoch)
        survived = await self.stop_app()
        app = self.group.app
        if app.after_stop:
            code = await self.command(app.after_stop, app.stop_timeout)
            if code != 0:
                log.warning(
                    "%s: after_stop %s", self.name, "timed out" if code is None else f"exit {code}"
                )
        if survived:
            self.state = "stop_failed"
            await self.reporter.stop_failed(self.name, self.epoch, survived)
        else:
            self.state = "stopped"
            await self.reporter.app_stopped(self.name, self.epoch, self.exit_code)
