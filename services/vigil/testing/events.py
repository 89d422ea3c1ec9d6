"""One recorder of the cluster's events, for tests and benchmarks alike.

Every event seen (on a plain subscription or replayed from the event stream) is kept in arrival
order as a ``Seen``: its position, subject, the time it reached us and the decoded event. Waiting
always has a deadline; there are two ways to wait, for the two ways tests run:

- ``await recorder.expect(pred, since=..., timeout=...)`` inside an event loop (integration tests);
- ``recorder.wait(kind, timeout, since, **fields)`` from a plain thread (e2e tests and benchmarks
  that drive a lab), while ``BusThread`` feeds the recorder from its own loop.

Benchmarks measure hops with the events' own ``ts`` (the cluster's clock): ``find`` and ``count``
select by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from vigil.core.bus import Bus
from vigil.core.credentials import Credentials
from vigil.core.subjects import Subjects
from vigil.wire.events import AnyEvent, Event

E = TypeVar("E", bound=Event)
T = TypeVar("T")
Predicate = Callable[[str, Event], bool]
DEADLINE = 5.0  # seconds: the longest one expected event may take, unless a test says otherwise
_DECODE = msgspec.json.Decoder(AnyEvent)


class WaitTimeout(AssertionError):
    """An expected event did not come before its deadline (an assertion: the test fails)."""


@dataclass(frozen=True)
class Seen:
    index: int  # position in arrival order
    subject: str
    event: Event
    received: float = field(default=0.0, compare=False)  # time.time() when it reached us


def of(cls: type[Event], subject: str | None = None, /, **fields: Any) -> Predicate:
    """A predicate: an event of type ``cls`` (on ``subject``) whose fields equal ``fields``."""

    def pred(s: str, e: Event) -> bool:
        if not isinstance(e, cls) or (subject is not None and s != subject):
            return False
        return all(getattr(e, k, None) == v for k, v in fields.items())

    return pred


def ts(event: Event) -> float:
    return event.ts.timestamp()


class Recorder:
    """Every event, in arrival order; thread-safe, with waits that have deadlines."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.undecodable: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[Predicate, asyncio.Future[Event]]] = []

    # -- feeding ---------------------------------------------------------------------------------
    async def on_msg(self, msg: Msg) -> None:
        """A nats-py subscription callback."""
        self.add(msg.subject, msg.data)

    def add(self, subject: str, data: bytes) -> None:
        try:
            event = _DECODE.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            with self._cond:
                self.undecodable.append((subject, bytes(data)))
            return
        with self._cond:
            self.seen.append(Seen(len(self.seen), subject, event, time.time()))
            self._cond.notify_all()
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(subject, event):
                fut.set_result(event)

    async def start(self, bus: Bus, subject: str | None = None) -> None:
        """Subscribe ``bus`` (to every event of its root unless told) and flush, so nothing
        published after this returns is missed."""
        await bus.nc.subscribe(subject or bus.subjects.all_events, cb=self.on_msg)
        await bus.nc.flush()

    # -- looking ---------------------------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        with self._cond:
            return [s.event for s in self.seen]

    def mark(self) -> int:
        """A position: waits and selections ``since`` it only look at later events."""
        with self._cond:
            return len(self.seen)

    def after(self, event: Event) -> int:
        """The position just after ``event`` (one a wait returned)."""
        with self._cond:
            return next(s.index + 1 for s in self.seen if s.event is event)

    def matching(self, pred: Predicate, since: int = 0) -> list[Event]:
        with self._cond:
            items = self.seen[since:]
        return [s.event for s in items if pred(s.subject, s.event)]

    def select(
        self, kind: type[Event] | tuple[type[Event], ...], since: int = 0, **fields: Any
    ) -> list[Seen]:
        with self._cond:
            items = self.seen[since:]
        return [
            s
            for s in items
            if isinstance(s.event, kind)
            and all(getattr(s.event, k, None) == v for k, v in fields.items())
        ]

    def find(
        self, kind: type[E], after: float, pred: Callable[[E], bool] = lambda _e: True
    ) -> E | None:
        """The earliest-stamped ``kind`` event stamped at or after ``after`` (wall clock)."""
        hits = [e for e in self.events if isinstance(e, kind) and ts(e) >= after and pred(e)]
        return min(hits, key=ts) if hits else None

    def stamped_since(self, t: float) -> list[Event]:
        """Events stamped at or after ``t``, in stamp order."""
        return sorted((e for e in self.events if ts(e) >= t), key=ts)

    def count(self, after: float, before: float | None = None) -> Counter[str]:
        """Events by type, stamped within [after, before]."""
        out: Counter[str] = Counter()
        for e in self.events:
            if ts(e) >= after and (before is None or ts(e) <= before):
                out[type(e).__name__] += 1
        return out

    def clear(self) -> None:
        with self._cond:
            self.seen.clear()

    def dump(self, group: str | None = None) -> str:
        with self._cond:
            items = list(self.seen)
        return "\n".join(
            f"  #{s.index} {s.subject} {msgspec.json.encode(s.event).decode()}"
            for s in items
            if group is None or getattr(s.event, "group", None) == group
        )

    # -- waiting inside an event loop ------------------------------------------------------------
    async def expect(self, pred: Predicate, *, since: int = 0, timeout: float = DEADLINE) -> Any:
        """The first event after ``since`` that matches, awaited with a deadline."""
        for e in self.matching(pred, since):
            return e
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = (pred, fut)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(waiter)

    async def none_within(self, pred: Predicate, *, since: int, timeout: float) -> None:
        """Assert that no matching event arrives within ``timeout`` (absence, with a deadline)."""
        with contextlib.suppress(TimeoutError):
            event = await self.expect(pred, since=since, timeout=timeout)
            raise AssertionError(f"unexpected event: {event!r}")

    # -- waiting from a thread -------------------------------------------------------------------
    def wait(
        self,
        kind: type[E],
        timeout: float,
        since: int = 0,
        where: Callable[[E], bool] = lambda _e: True,
        **fields: Any,
    ) -> tuple[Seen, E]:
        """The first ``kind`` event (with ``fields``, for which ``where`` holds) at or after
        position ``since``; raises ``WaitTimeout`` with the group's events at the deadline."""
        deadline = time.monotonic() + timeout
        looked = since
        with self._cond:
            while True:
                for s in self.seen[looked:]:
                    ok = isinstance(s.event, kind) and all(
                        getattr(s.event, k, None) == v for k, v in fields.items()
                    )
                    if ok and where(s.event):  # type: ignore[arg-type]
                        return s, s.event  # type: ignore[return-value]
                looked = len(self.seen)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise WaitTimeout(
            f"timed out after {timeout:g}s waiting for {kind.__name__} {fields} "
            f"(since #{since}); events:\n{self.dump(fields.get('group'))}"
        )


class BusThread:
    """A bus connection on a thread of its own, feeding a ``Recorder`` from the event stream
    (which replays what happened before we connected, then goes on in stored order). Lets plain
    synchronous code (e2e tests, the lab benchmarks) watch the cluster and call it."""

    def __init__(
        self,
        url: str,
        name: str = "harness",
        subjects: Subjects | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """``credentials``: a secure lab's (``Lab.credentials``); the reader's to watch, the
        operator's to apply through ``bus`` too."""
        self.recorder = Recorder()
        self.subjects = subjects or Subjects()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self.thread.start()
        self.bus: Bus | None = None
        self._sub: Any = None
        try:
            self.call(self._connect(url, name, credentials), timeout=20)
        except BaseException:
            self.close()
            raise

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the bus's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self, url: str, name: str, credentials: Credentials | None) -> None:
        self.bus = await Bus.connect(
            [url], self.subjects, "harness", name=name, credentials=credentials or Credentials()
        )
        recorder = self.recorder
        self._sub = await self.bus.js.subscribe(
            self.subjects.all_events,
            stream=self.subjects.stream,  # named: looking it up by subject is no role's right
            cb=recorder.on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )

    def close(self) -> None:
        """Idempotent."""
        if self.loop.is_closed():
            return
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self.call(self._close(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        self.loop.close()

    async def _close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self.bus is not None:
            await self.bus.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
