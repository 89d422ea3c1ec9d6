"""A nats-server of our own: free port, its own store directory, stopped by its PID."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

from vigil.core import embedded


class NatsServer:
    """``with NatsServer(dir) as url: ...`` runs JetStream on a free port until the block ends."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        self.proc, self.url = embedded.start(self.store)
        return self.url

    def stop(self) -> None:
        """Idempotent: terminate, then kill if it does not go within 10 s."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()


class NatsCluster:
    """Three (or ``size``) servers in one JetStream cluster on 127.0.0.1, each its own store;
    ``kill(name)`` / ``start(name)`` rehearse a server outage (``nats-1``..``nats-N``)."""

    def __init__(self, store: Path, size: int = 3) -> None:
        self.store = store
        self.ports = [embedded.free_port() for _ in range(size)]
        cluster_ports = [embedded.free_port() for _ in range(size)]
        self.argv = embedded.cluster_commands("127.0.0.1", self.ports, store, cluster_ports)
        self.names = [f"nats-{i + 1}" for i in range(size)]
        self.urls = [f"nats://127.0.0.1:{p}" for p in self.ports]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str | None = None) -> list[str]:
        for i, n in enumerate(self.names):
            if (name is None or n == name) and n not in self.procs:
                log = (self.store / f"{n}.log").open("ab")
                self.procs[n] = subprocess.Popen(self.argv[i], stdout=log, stderr=subprocess.STDOUT)
        for i, n in enumerate(self.names):
            if name is None or n == name:
                embedded.wait_ready("127.0.0.1", self.ports[i])
        return self.urls

    def kill(self, name: str) -> None:
        """SIGKILL, as a crashed machine: no goodbye to its peers or clients."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()
