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
