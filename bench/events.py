"""Recording the cluster's own events (their ``ts`` is the clock the hops are measured with)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from vigil.wire.events import AnyEvent, Event

E = TypeVar("E", bound=Event)
_DECODE = msgspec.json.Decoder(AnyEvent)


class Recorder:
    """Every event on ``<root>.>``, decoded, with the time it reached us."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.undecodable = 0

    async def start(self, nc: Client, subject: str) -> None:
        await nc.subscribe(subject, cb=self._on_msg)
        await nc.flush()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            self.events.append((time.time(), _DECODE.decode(msg.data)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.undecodable += 1

    def since(self, t: float) -> list[Event]:
        """Events stamped at or after ``t`` (wall clock), in stamp order."""
        return sorted((e for _, e in self.events if e.ts.timestamp() >= t), key=ts)

    def find(
        self, kind: type[E], after: float, pred: Callable[[E], bool] = lambda _e: True
    ) -> E | None:
        """The first ``kind`` event stamped at or after ``after`` that satisfies ``pred``."""
        hits = [
            e
            for _, e in self.events
            if isinstance(e, kind) and e.ts.timestamp() >= after and pred(e)
        ]
        return min(hits, key=ts) if hits else None

    def count(self, after: float, before: float | None = None) -> Counter[str]:
        out: Counter[str] = Counter()
        for _, e in self.events:
            t = e.ts.timestamp()
            if t >= after and (before is None or t <= before):
                out[type(e).__name__] += 1
        return out

    def clear(self) -> None:
        self.events.clear()


def ts(event: Event) -> float:
    return event.ts.timestamp()
