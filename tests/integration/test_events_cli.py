"""``vigil events``: the history kept in the JetStream stream, readable and as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys

from vigil.cli.events import show
from vigil.core.bus import Bus, ensure_stream
from vigil.core.subjects import Subjects
from vigil.wire.events import NodeLost


async def test_history_is_kept_and_printed(nats_url: str, subjects: Subjects) -> None:
    bus = await Bus.connect([nats_url], subjects, "test", name="t", persistent=False)
    try:
        await ensure_stream(bus)
        for node in ("n1", "n2"):
            await bus.publish(
                subjects.node_lost(node), NodeLost(**bus.stamp(), node=node, silent_for=0.8)
            )
        await bus.nc.flush()
        for _ in range(1000):  # the stream stores what it captured asynchronously: 10 s at most
            if (await bus.js.stream_info(subjects.stream)).state.messages >= 2:
                break
            await asyncio.sleep(0.01)
        out = io.StringIO()
        assert await show(bus, None, follow=False, as_json=False, out=out) == 2
        lines = out.getvalue().splitlines()
        assert "node_lost" in lines[0] and "node=n1" in lines[0] and "test@t" in lines[0]
        assert "node=n2" in lines[1]
    finally:
        await bus.close()
    env = {**os.environ, "VIGIL_ROOT": subjects.root}
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "vigil.cli.main",
            "events",
            "-o",
            "json",
            "--since",
            "10m",
            "--nats",
            nats_url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["type"], e["node"]) for e in events] == [("node_lost", "n1"), ("node_lost", "n2")]


def test_bad_since_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.cli.main", "events", "--since", "yesterday"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("vigil: --since:")
