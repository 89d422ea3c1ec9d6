"""``vigil up``: Vigil on one machine, with an embedded NATS cluster unless a URL is given.

Starts three embedded NATS servers in a JetStream cluster (R3; ``--nats-servers 1`` for one),
two membership and two placement replicas and, for ``--node``, that node's address service and
supervisor, each as its own process; applies ``-f FILE``. It is their supervising parent, like
systemd ``Restart=always``: a process that dies is started again with a backoff
(``vigil.lab.keeper``). SIGTERM or Ctrl-C stops them all, in reverse order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..core import embedded
from ..core.bus import nats_urls
from ..lab.keeper import Kept

REPLICAS = 2  # of membership and of placement


def up(
    file: str | None,
    node: str | None,
    interface: str | None,
    state_dir: Path,
    url: str | None,
    nats_servers: int = 3,
) -> int:
    kept: list[Kept] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def keep(name: str, argv: list[str]) -> None:
        process = Kept(name, argv)
        process.start()
        kept.append(process)
        print(f"vigil: {name} pid {process.pid}", flush=True)

    try:
        if url is None and not os.environ.get("VIGIL_NATS_URL"):
            url = start_nats(state_dir / "nats", nats_servers, keep)
            # Buckets and history get one copy per server (the services read this).
            os.environ.setdefault("VIGIL_REPLICAS", str(min(3, nats_servers)))
        urls = ",".join(nats_urls(url))
        vigil = [sys.executable, "-m", "vigil.cli.main"]
        host = socket.gethostname()
        roles = {
            f"{r}-{i + 1}": [r, "--name", f"{host}-{i + 1}"]
            for r in ("membership", "placement")
            for i in range(REPLICAS)
        }
        if node:
            roles[f"{node}-address"] = [
                "address", "--node", node, *(["--interface", interface] if interface else [])
            ]  # fmt: skip
            roles[f"{node}-supervisor"] = [
                "supervisor", "--node", node, "--state-dir", str(state_dir / node)
            ]  # fmt: skip
        for name, role in roles.items():
            keep(name, [*vigil, *role, "--nats", urls])
        if file:
            subprocess.run([*vigil, "apply", "-f", file, "--nats", urls], check=True)
        print(f"vigil: running {', '.join(roles)}; Ctrl-C stops", flush=True)
        while not stopping:
            for process in kept:
                process.tick(time.monotonic())
            time.sleep(0.2)
        return 0
    finally:
        for process in reversed(kept):
            process.stop()


def start_nats(data: Path, servers: int, keep: Callable[[str, list[str]], None]) -> str:
    """The embedded servers (a JetStream cluster when more than one) on 127.0.0.1, kept
    running; returns their URLs, comma-separated, once JetStream can place every copy."""
    data.mkdir(parents=True, exist_ok=True)
    ports = [embedded.free_port() for _ in range(servers)]
    cluster_ports = [embedded.free_port() for _ in range(servers)]
    commands = embedded.cluster_commands("127.0.0.1", ports, data, cluster_ports)
    for i, argv in enumerate(commands):
        keep(f"nats-{i + 1}", argv)
    for port in ports:
        embedded.wait_ready("127.0.0.1", port)
    urls = [f"nats://127.0.0.1:{p}" for p in ports]
    asyncio.run(embedded.wait_jetstream(urls, min(3, servers)))
    joined = ",".join(urls)
    copies = f"R{min(3, servers)}"
    print(f"vigil: embedded NATS at {joined} (JetStream {copies}, data in {data})", flush=True)
    return joined
