"""``vigil up`` with no NATS URL starts the embedded server and the cluster-wide services."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_up_starts_an_embedded_nats_and_status_works(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_NATS_URL"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vigil.cli.main",
            "up",
            "-f",
            str(ROOT / "examples" / "lab.yaml"),
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None:
            assert time.monotonic() < deadline, "vigil up never reported its NATS URL"
            line = proc.stdout.readline()
            assert line, "vigil up exited early"
            if m := re.search(r"embedded NATS at (nats://\S+)", line):
                url = m.group(1)
        assert (tmp_path / "nats" / "jetstream").is_dir()
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(
                [sys.executable, "-m", "vigil.cli.main", "status", "-o", "json", "--nats", url],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode == 0 and json.loads(out.stdout)["cluster"] == "lab":
                break
            assert time.monotonic() < deadline, out.stderr
        view = json.loads(out.stdout)
        assert [n["name"] for n in view["nodes"]] == ["n1", "n2", "n3"]
        assert all(n["state"] == "lost" for n in view["nodes"])  # no node agent runs here
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
