"""A flood on a subject a service consumes is bounded: its inbound queue holds at most
``PENDING_MSGS`` messages, the rest are dropped and counted, and the log gets at most one line
per subject per second, with the sender's text truncated."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.aio.client import Client

from vigil.core import bus as bus_mod
from vigil.core.bus import Bus
from vigil.core.subjects import Subjects
from vigil.wire.events import ConfigApplied


async def test_a_flood_is_dropped_counted_and_logged_sparingly(
    nats_url: str, client: Client, subjects: Subjects, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await Bus.connect([nats_url], subjects, "flooded", persistent=False)
    release = asyncio.Event()
    handled = 0

    async def slow(_: ConfigApplied) -> None:
        nonlocal handled
        handled += 1
        await release.wait()  # a handler stuck behind the flood: the queue fills up

    await bus.subscribe(subjects.config_applied, ConfigApplied, slow)
    await bus.nc.flush()
    garbage = b"\x1b[31m" + b"x" * 2000  # a terminal escape and a long text
    flood = bus_mod.PENDING_MSGS * 3
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vigil.core.bus"):
        for _ in range(flood):
            await client.publish(subjects.config_applied, garbage)
        await client.flush()
        await bus.nc.flush(timeout=10)  # everything the server sent us has reached the client
        release.set()
        # the queued garbage drains through the decoder: wait for the count to settle
        for _ in range(5000):  # round trips, each a yield to the subscription's task
            if sum(bus.dropped.values()) >= flood:
                break
            await bus.nc.flush()
    elapsed = time.monotonic() - started
    assert sum(bus.dropped.values()) == flood  # every message is counted: malformed or overflow
    lines = [r.getMessage() for r in caplog.records if "dropped message" in r.getMessage()]
    assert 1 <= len(lines) <= 2 + int(elapsed / bus_mod.DROP_LOG_EVERY)
    assert all(len(line) < 400 and "\x1b" not in line for line in lines)
    await bus.close()
