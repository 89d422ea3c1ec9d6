"""``vigil up``: Vigil on one machine, with an embedded NATS cluster unless a URL is given.

Starts three embedded NATS servers in a JetStream cluster (R3; ``--nats-servers 1`` for one),
two membership and two placement replicas and, for ``--node``, that node's address service and
supervisor, each as its own process; applies ``-f FILE``. It is their supervising parent, like
systemd ``Restart=always``: a process that dies is started again with a backoff
(``vigil.lab.keeper``). SIGTERM or Ctrl-C stops them all, in reverse order.

The embedded servers are secure by default: ``STATE_DIR/secure`` holds a bundle (``vigil secure
init`` for the file's nodes and ``--node``; new keys at every start, the same CA), every server
requires an nkey and TLS (clients and routes), and each process has its own role's key.
``--insecure``: anonymous and plaintext, for speed only.
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

from ..core import config as config_mod
from ..core import embedded
from ..core.bus import nats_urls
from ..core.subjects import Subjects
from ..lab.keeper import Kept
from ..secure import bundle as bundle_mod
from ..secure.serverconf import member_conf

REPLICAS = 2  # of membership and of placement


def up(
    file: str | None,
    node: str | None,
    interface: str | None,
    state_dir: Path,
    url: str | None,
    nats_servers: int = 3,
    *,
    secure: bool = True,
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

    bundle: bundle_mod.Bundle | None = None

    def creds(user: str) -> list[str]:
        """A process's flags for its own user (none for an insecure or external bus)."""
        if bundle is None:
            return []
        return ["--creds", str(bundle.creds(user)), "--tls-ca", str(bundle.ca)]

    try:
        if url is None and not os.environ.get("VIGIL_NATS_URL"):
            if secure:
                bundle = make_bundle(state_dir / "secure", file, node)
            url = start_nats(state_dir / "nats", nats_servers, keep, bundle)
            # Buckets and history get one copy per server (the services read this).
            os.environ.setdefault("VIGIL_REPLICAS", str(min(3, nats_servers)))
        urls = ",".join(nats_urls(url))
        vigil = [sys.executable, "-m", "vigil.cli.main"]
        host = socket.gethostname()
        roles = {  # process name: its arguments, as which user
            f"{r}-{i + 1}": ([r, "--name", f"{host}-{i + 1}"], r)
            for r in ("membership", "placement")
            for i in range(REPLICAS)
        }
        if node:
            roles[f"{node}-address"] = ([
                "address", "--node", node, *(["--interface", interface] if interface else [])
            ], f"node-{node}")  # fmt: skip
            roles[f"{node}-supervisor"] = ([
                "supervisor", "--node", node, "--state-dir", str(state_dir / node)
            ], f"node-{node}")  # fmt: skip
        for name, (role, user) in roles.items():
            keep(name, [*vigil, *role, "--nats", urls, *creds(user)])
        if file:
            apply = [*vigil, "apply", "-f", file, "--nats", urls, *creds("operator")]
            subprocess.run(apply, check=True)
        print(f"vigil: running {', '.join(roles)}; Ctrl-C stops", flush=True)
        while not stopping:
            for process in kept:
                process.tick(time.monotonic())
            time.sleep(0.2)
        return 0
    finally:
        for process in reversed(kept):
            process.stop()


def make_bundle(directory: Path, file: str | None, node: str | None) -> bundle_mod.Bundle:
    """Credentials for every node of the file (and ``node``); rotated at every start."""
    nodes = [n.name for n in config_mod.load_file(file).nodes] if file else []
    if node and node not in nodes:
        nodes.append(node)
    b = bundle_mod.init(directory, nodes, subjects=Subjects.from_env(), force=True)
    print(
        f"vigil: credentials in {directory} (operator: --creds {b.creds('operator')} "
        f"--tls-ca {b.ca}; reader: {b.creds('reader')})",
        flush=True,
    )
    return b


def start_nats(
    data: Path,
    servers: int,
    keep: Callable[[str, list[str]], None],
    bundle: bundle_mod.Bundle | None = None,
) -> str:
    """The embedded servers (a JetStream cluster when more than one) on 127.0.0.1, kept
    running; returns their URLs, comma-separated, once JetStream can place every copy (with a
    ``bundle``: once they listen; the services' bucket creation retries until it can)."""
    data.mkdir(parents=True, exist_ok=True)
    ports = [embedded.free_port() for _ in range(servers)]
    cluster_ports = [embedded.free_port() for _ in range(servers)]
    if bundle is None:
        commands = embedded.cluster_commands("127.0.0.1", ports, data, cluster_ports)
    else:
        commands = secure_commands(bundle, data, ports, cluster_ports)
    for i, argv in enumerate(commands):
        keep(f"nats-{i + 1}", argv)
    for port in ports:
        embedded.wait_ready("127.0.0.1", port)
    urls = [f"nats://127.0.0.1:{p}" for p in ports]
    if bundle is None:  # (the probe's stream is no role's)
        asyncio.run(embedded.wait_jetstream(urls, min(3, servers)))
    joined = ",".join(urls)
    copies = f"R{min(3, servers)}"
    tls = ", auth + TLS" if bundle else ", anonymous, plaintext"
    print(f"vigil: embedded NATS at {joined} (JetStream {copies}{tls}, data in {data})", flush=True)
    return joined


def secure_commands(
    bundle: bundle_mod.Bundle, data: Path, ports: list[int], cluster_ports: list[int]
) -> list[list[str]]:
    routes = [f"127.0.0.1:{p}" for p in cluster_ports] if len(ports) > 1 else None
    out = []
    for i, (port, cluster_port) in enumerate(zip(ports, cluster_ports, strict=True)):
        name = f"nats-{i + 1}"
        conf = bundle.dir / f"{name}.conf"
        conf.write_text(
            member_conf(
                name,
                f"127.0.0.1:{port}",
                str(data / name / "jetstream"),
                cluster_listen=f"127.0.0.1:{cluster_port}" if routes else None,
                routes=routes,
            )
        )
        out.append([embedded.server_binary(), "--config", str(conf)])
    return out
