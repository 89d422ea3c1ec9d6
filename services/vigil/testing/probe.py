"""The real client: ``python -m vigil.lab.probe`` in the lab's client namespace, connecting to a
target over and over, one JSON line an attempt (who served it, or the error)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .lines import JsonLines


@dataclass(frozen=True)
class Answer:
    t: float  # the probe's own clock: time.time() when the attempt started
    ok: bool
    body: str
    error: str

    @property
    def text(self) -> str:
        """What the attempt got: the body, or the error."""
        return self.body or self.error

    @property
    def server(self) -> str | None:
        """The node that served it (the demo app says ``served by <node> ...``)."""
        if self.ok and self.body.startswith("served by "):
            return self.body.split()[2]
        return None


def _answer(raw: dict[str, Any]) -> Answer:
    return Answer(raw["t"], raw["ok"], raw.get("body") or "", raw.get("error") or "")


class Probe:
    """The probe in ``where``: a network namespace's name, or the command that runs a Python
    with Vigil where the client is (e.g. ``docker exec CONTAINER python3``)."""

    def __init__(
        self,
        where: str | Sequence[str],
        target: str,
        *,
        interval: float = 0.02,
        timeout: float = 0.1,
        duration: float = 240.0,
    ) -> None:
        python = ["ip", "netns", "exec", where, sys.executable] if isinstance(where, str) else where
        argv = [*python, "-m", "vigil.lab.probe"]
        argv += ["--target", target, "--interval", str(interval), "--timeout", str(timeout)]
        argv += ["--duration", str(duration)]
        self.argv = argv
        self._lines = JsonLines(argv, _answer)

    @property
    def answers(self) -> list[Answer]:
        return self._lines.snapshot()

    def since(self, t: float) -> list[Answer]:
        """Attempts started at or after wall-clock time ``t``."""
        return [a for a in self.answers if a.t >= t]

    def served_by(self, node: str, since: float) -> Answer | None:
        """The first attempt since ``since`` that ``node`` served."""
        return next((a for a in self.since(since) if a.server == node), None)

    def servers(self, since: float) -> list[str]:
        """Who served the attempts since ``since``, in order (runs collapsed). An attempt whose
        connection closed before any answer names nobody; an answer that is not the demo app's
        counts as its first 40 characters."""
        out: list[str] = []
        for a in self.since(since):
            if a.ok and a.body:
                who = a.server or a.body[:40]
                if not out or out[-1] != who:
                    out.append(who)
        return out

    def _first(self, ok: Callable[[Answer], bool], seen: int) -> tuple[Answer | None, int]:
        """The first answer from position ``seen`` on for which ``ok`` holds, and how far we
        looked."""
        answers = self.answers
        return next((a for a in answers[seen:] if ok(a)), None), len(answers)

    def until(self, ok: Callable[[Answer], bool], timeout: float, what: str) -> Answer:
        """The first answer for which ``ok`` holds, polled (the probe writes every few ms)."""
        deadline, seen = time.monotonic() + timeout, 0
        while (found := self._first(ok, seen))[0] is None:
            seen = found[1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"the client never saw {what} within {timeout:g}s")
            time.sleep(0.01)
        return found[0]

    async def wait_for(self, ok: Callable[[Answer], bool], timeout: float, what: str) -> Answer:
        """``until`` for a caller inside an event loop."""
        deadline, seen = time.monotonic() + timeout, 0
        while (found := self._first(ok, seen))[0] is None:
            seen = found[1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"the client never saw {what} within {timeout:g}s")
            await asyncio.sleep(0.01)
        return found[0]

    def stop(self) -> None:
        self._lines.stop()
