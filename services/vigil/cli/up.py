"""``vigil up``: Vigil on one machine, with the embedded NATS unless a URL is given.

Starts the broker (if needed), membership, placement and, for ``--node``, that node's address
service and supervisor, each as its own process; applies ``-f FILE``; stops them all, in reverse
order, on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..core import embedded
from ..core.bus import nats_urls


def up(
    file: str | None, node: str | None, interface: str | None, state_dir: Path, url: str | None
) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if url is None and not os.environ.get("VIGIL_NATS_URL"):
            server, url = embedded.start(state_dir / "nats", port=embedded.free_port())
            procs.append(server)
            print(
                f"vigil: embedded NATS at {url} (JetStream data in {state_dir / 'nats'})",
                flush=True,
            )
        urls = ",".join(nats_urls(url))
        vigil = [sys.executable, "-m", "vigil.cli.main"]
        roles = [["membership"], ["placement"]]
        if node:
            roles.append(
                ["address", "--node", node, *(["--interface", interface] if interface else [])]
            )
            roles.append(["supervisor", "--node", node, "--state-dir", str(state_dir / node)])
        for role in roles:
            procs.append(subprocess.Popen([*vigil, *role, "--nats", urls]))
        if file:
            subprocess.run([*vigil, "apply", "-f", file, "--nats", urls], check=True)
        print(f"vigil: running {', '.join(r[0] for r in roles)}; Ctrl-C stops", flush=True)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        failed = [p for p in procs if p.poll() not in (None, 0)]
        return 1 if failed and not stopping else 0
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
