"""A helper process whose output lines are read on a thread into a list (JSON lines or plain)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")


class Lines(Generic[T]):
    """Runs ``argv``; each output line becomes ``parse(line)`` in ``items`` (a line it rejects
    with ValueError or KeyError is skipped). ``stop`` terminates the process by its PID and joins
    the reader; it is idempotent."""

    def __init__(
        self,
        argv: list[str],
        parse: Callable[[str], T],
        stderr: int | IO[Any] = subprocess.DEVNULL,
    ) -> None:
        self.items: list[T] = []
        self.lock = threading.Lock()
        self._parse = parse
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = self._parse(line)
            except (ValueError, KeyError):
                continue  # a stray line (a warning) is not a record
            with self.lock:
                self.items.append(item)

    def snapshot(self) -> list[T]:
        with self.lock:
            return list(self.items)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.reader.join(timeout=5)


class JsonLines(Lines[T]):
    """``Lines`` of a process that prints one JSON object a line: ``parse(record)`` each."""

    def __init__(
        self,
        argv: list[str],
        parse: Callable[[dict[str, Any]], T],
        stderr: int | IO[Any] = subprocess.DEVNULL,
    ) -> None:
        super().__init__(argv, lambda line: parse(json.loads(line)), stderr)
