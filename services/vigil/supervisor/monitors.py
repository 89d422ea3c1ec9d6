"""Monitors: is the group's app really serving? ``tcp``, ``http`` and ``exec`` probes.

A probe returns None when healthy, else a one-line reason. A monitor *trips* after ``failures``
consecutive failed probes; one success resets the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from vigil.wire.cluster import Monitor

from ..core.runner import stop_if_cancelled
from .process import render_command


async def probe(monitor: Monitor, address: str, env: Mapping[str, str]) -> str | None:
    try:
        async with asyncio.timeout(monitor.timeout):
            if monitor.tcp is not None:
                return await _tcp(address, monitor.tcp)
            if monitor.http is not None:
                url = string.Template(monitor.http).safe_substitute(env)
                return await asyncio.to_thread(_http, url, monitor.timeout)
            assert monitor.exec is not None
            return await _exec(render_command(monitor.exec, env), env)
    except TimeoutError:
        return f"{monitor.kind} {monitor.target}: no answer within {monitor.timeout:g}s"


async def _tcp(address: str, port: int) -> str | None:
    try:
        _, writer = await asyncio.open_connection(address, port)
    except OSError as exc:
        return f"tcp {address}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


# Monitors talk to the group's own address: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(url: str, timeout: float) -> str | None:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"http {url}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"http {url}: status {status}"


async def _exec(argv: list[str], env: Mapping[str, str]) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return f"exec {argv[0]}: {exc.strerror or exc}"
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return None if code == 0 else f"exec {' '.join(argv)}: exit {code}"


@dataclass
class Count:
    """Consecutive failures of one monitor, pure."""

    threshold: int
    failed: int = 0

    def observe(self, reason: str | None) -> bool:
        """True when this observation trips the monitor."""
        self.failed = 0 if reason is None else self.failed + 1
        return self.failed >= self.threshold


async def healthy(
    monitors: list[Monitor], address: str, env: Mapping[str, str], timeout: float
) -> str | None:
    """Wait until every monitor passed once; the last failure's reason if ``timeout`` runs out."""
    pending = list(monitors)
    last: str | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        results = await asyncio.gather(*(probe(m, address, env) for m in pending))
        pending = [m for m, r in zip(pending, results, strict=True) if r is not None]
        last = next((r for r in results if r is not None), last)
        if pending:
            if loop.time() >= deadline:
                return f"not healthy within {timeout:g}s: {last}"
            await asyncio.sleep(0.05)
    return None


async def watch(monitors: list[Monitor], address: str, env: Mapping[str, str]) -> str:
    """Run every monitor at its interval until one trips; returns why."""
    tripped: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def one(monitor: Monitor) -> None:
        count = Count(monitor.failures)
        while True:
            stop_if_cancelled()
            await asyncio.sleep(monitor.interval)
            reason = await probe(monitor, address, env)
            if count.observe(reason) and not tripped.done():
                tripped.set_result(f"{reason} ({count.failed} times in a row)")
                return

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(m), name=f"monitor-{m.kind}") for m in monitors]
        try:
            return await tripped
        finally:
            for task in tasks:
                task.cancel()
