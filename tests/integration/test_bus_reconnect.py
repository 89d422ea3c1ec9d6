"""After a NATS restart a service is back in contact at once: a PING lost with the old
connection does not hold ``round_trip`` (and with it the supervisor's self-fence) for a minute."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vigil.core import embedded
from vigil.core.bus import Bus
from vigil.core.subjects import Subjects

from .conftest import DEADLINE


async def test_round_trip_answers_soon_after_the_server_comes_back(tmp_path: Path) -> None:
    port = embedded.free_port()
    proc, url = embedded.start(tmp_path, port=port)
    procs = [proc]
    bus = await Bus.connect([url], Subjects("rt"), "supervisor", name="n1")
    try:
        assert await bus.round_trip(1.0)
        proc.terminate()
        proc.wait(timeout=10)
        assert not await bus.round_trip(0.2)  # a PING left outstanding on the dead connection
        proc, _ = embedded.start(tmp_path, port=port)
        procs.append(proc)
        async with asyncio.timeout(DEADLINE):
            while not await bus.round_trip(0.2):
                pass
    finally:
        await bus.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
