"""``vigil up`` with no NATS URL: three embedded servers in a JetStream cluster (R3), two
membership and two placement replicas, each restarted when it dies; ``vigil status`` works with
the operator's credentials, and an anonymous client is refused (secure by default)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from vigil.core.bus import Bus, BusError
from vigil.core.credentials import Credentials
from vigil.core.subjects import Subjects
from vigil.secure.bundle import Bundle

ROOT = Path(__file__).resolve().parents[2]


class Output:
    """The lines ``vigil up`` prints, read by a thread; ``wait`` finds one with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self.stdout = proc.stdout
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stdout:
            self.lines.append(line)

    def wait(self, ok: Callable[[str], re.Match[str] | None], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if m := ok(line):
                    return m.group(1)
            assert time.monotonic() < deadline, f"vigil up never printed {what}: {self.lines}"
            time.sleep(0.05)


async def created(js: JetStreamContext, name: str) -> StreamInfo:
    """The stream's info once it exists: each service creates the buckets it opens as it starts
    (membership opens the leases bucket after the nodes bucket `vigil status` reads)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await js.stream_info(name)
        except NotFoundError:
            assert time.monotonic() < deadline, f"stream {name} never created"
            await asyncio.sleep(0.1)  # no event for a stream's creation: ask again


async def stream_copies(urls: str, reader: Credentials) -> dict[str, int]:
    servers = urls.split(",")
    options = reader.options(servers)
    nc = await nats.connect(servers, connect_timeout=5, max_reconnect_attempts=1, **options)
    try:
        js = nc.jetstream()
        s = Subjects()
        names = [*(f"KV_{b}" for b in s.buckets), s.stream]
        infos = [await created(js, n) for n in names]
        return {i.config.name: 1 + len(i.cluster.replicas or []) if i.cluster else 1 for i in infos}
    finally:
        await nc.close()


async def refused(urls: str, ca: Path) -> None:
    with pytest.raises(BusError, match="authorization"):
        await Bus.connect(
            urls.split(","), Subjects(), "t", persistent=False, credentials=Credentials(tls_ca=ca)
        )


def test_up_runs_three_nats_servers_two_replicas_each_and_restarts_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIGIL_NATS_URL", "VIGIL_REPLICAS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli.main", "up", "-f", str(ROOT / "examples" / "lab.yaml"),
         "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        out = Output(proc)
        url = out.wait(
            lambda ln: re.search(r"embedded NATS at (nats://\S+)", ln), 60, "its NATS URLs"
        )
        assert len(url.split(",")) == 3, url
        for i in (1, 2, 3):
            assert (tmp_path / "nats" / f"nats-{i}" / "jetstream").is_dir()
        out.wait(lambda ln: re.search(r"vigil: (running) ", ln), 30, "that it runs")
        bundle = Bundle(tmp_path / "secure")
        creds = ["--creds", str(bundle.creds("operator")), "--tls-ca", str(bundle.ca)]
        deadline = time.monotonic() + 30
        while True:
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "vigil.cli.main",
                    "status",
                    "-o",
                    "json",
                    "--nats",
                    url,
                    *creds,
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if status.returncode == 0 and json.loads(status.stdout)["cluster"] == "lab":
                break
            assert time.monotonic() < deadline, status.stderr
            time.sleep(0.1)
        view = json.loads(status.stdout)
        assert [n["name"] for n in view["nodes"]] == ["n1", "n2", "n3"]
        assert all(n["state"] == "lost" for n in view["nodes"])  # no node agent runs here
        copies = asyncio.run(stream_copies(url, Credentials(bundle.creds("reader"), bundle.ca)))
        asyncio.run(refused(url, bundle.ca))
        assert copies and set(copies.values()) == {3}, copies

        # every replica is there, and one that dies is started again
        pids = {
            role: int(out.wait(lambda ln, r=role: re.search(rf"vigil: {r} pid (\d+)", ln), 5, role))
            for role in ("membership-1", "membership-2", "placement-1", "placement-2", "nats-2")
        }
        for role in ("membership-1", "nats-2"):
            os.kill(pids[role], signal.SIGKILL)
            again = out.wait(
                lambda ln, r=role: re.search(rf"keeper: {r} started again \(#1, pid (\d+)\)", ln),
                10,
                f"{role} restarted",
            )
            assert int(again) != pids[role]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
