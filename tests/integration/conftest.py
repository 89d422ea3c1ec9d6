"""Integration fixtures: one real nats-server (JetStream on) per test module, and helpers.

Every test isolates itself with its own subject root (buckets and the event stream derive from
it), so the tests of a module share the server but never each other's state. Tests assert by
awaiting an event with a deadline, never by sleeping until something has probably happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import uuid4

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from vigil.core import embedded
from vigil.core.bus import Bus, now
from vigil.core.config import load_data
from vigil.core.subjects import Subjects
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import AnyEvent, Event, Heartbeat

DEADLINE = 5.0  # seconds: the longest any single expected event may take to arrive
_DECODER = msgspec.json.Decoder(AnyEvent)


# -- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of our own: free port, its own store dir, stopped by its PID at teardown."""
    proc, url = embedded.start(tmp_path_factory.mktemp("nats"))
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def subjects() -> Subjects:
    return Subjects(root=f"t{uuid4().hex[:8]}")


# -- specs ---------------------------------------------------------------------------------------
def make_spec(
    nodes: list[str],
    groups: list[dict[str, Any]] | None = None,
    *,
    heartbeat: str = "50ms",
    lease: str = "250ms",
) -> ClusterSpec:
    return load_data(
        {
            "cluster": {"name": "it", "timing": {"heartbeat": heartbeat, "lease": lease}},
            "nodes": [{"name": n} for n in nodes],
            "groups": groups or [],
        }
    )


def group(name: str, address: str, preferred: str, possible: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "preferred": preferred,
        "possible": possible,
        "app": {"command": "sleep 1000"},
    }


# -- watching the bus ----------------------------------------------------------------------------
Predicate = Callable[[str, Event], bool]


class Recorder:
    """Every event seen on a subscription, in order, with awaitable predicates."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []
        self.undecodable: list[tuple[str, bytes]] = []
        self._waiters: list[tuple[Predicate, asyncio.Future[Event]]] = []

    async def on_msg(self, msg: Msg) -> None:
        try:
            event = _DECODER.decode(msg.data)
        except msgspec.DecodeError:
            self.undecodable.append((msg.subject, msg.data))
            return
        self.events.append((msg.subject, event))
        for pred, fut in self._waiters:
            if not fut.done() and pred(msg.subject, event):
                fut.set_result(event)

    def mark(self) -> int:
        """A position: ``wait(..., since=mark)`` only looks at events after it."""
        return len(self.events)

    def after(self, event: Event) -> int:
        """The position just after ``event`` (one that ``wait`` returned)."""
        return next(i + 1 for i, (_, e) in enumerate(self.events) if e is event)

    def matching(self, pred: Predicate, since: int = 0) -> list[Event]:
        return [e for s, e in self.events[since:] if pred(s, e)]

    async def wait(self, pred: Predicate, *, since: int = 0, timeout: float = DEADLINE) -> Any:
        """The first event after ``since`` that matches, awaited with a deadline."""
        for s, e in self.events[since:]:
            if pred(s, e):
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
            event = await self.wait(pred, since=since, timeout=timeout)
            raise AssertionError(f"unexpected event: {event!r}")


def of(cls: type[Event], subject: str | None = None, /, **fields: Any) -> Predicate:
    """A predicate: an event of type ``cls`` (on ``subject``) whose fields equal ``fields``."""

    def pred(s: str, e: Event) -> bool:
        if not isinstance(e, cls) or (subject is not None and s != subject):
            return False
        return all(getattr(e, k) == v for k, v in fields.items())

    return pred


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    """The test's own connection: for publishing as a fake node and for watching."""
    nc = await nats.connect(nats_url, name="integration-test")
    try:
        yield nc
    finally:
        await nc.close()


async def record(nc: Client, subject: str) -> Recorder:
    rec = Recorder()
    await nc.subscribe(subject, cb=rec.on_msg)
    await nc.flush()  # the subscription is registered on the server before we go on
    return rec


# -- fake node agents ----------------------------------------------------------------------------
class Hearts:
    """Fake node agents: heartbeats every ``interval`` for the nodes in ``beating``."""

    def __init__(self, nc: Client, subjects: Subjects, interval: float = 0.05) -> None:
        self.nc, self.subjects, self.interval = nc, subjects, interval
        self.beating: set[str] = set()
        self._seq = itertools.count(1)

    def beat(self, node: str) -> bytes:
        return msgspec.json.encode(
            Heartbeat(source=f"agent@{node}", seq=next(self._seq), ts=now(), node=node)
        )

    async def send(self, node: str, subject: str | None = None) -> None:
        await self.nc.publish(subject or self.subjects.heartbeat(node), self.beat(node))

    async def run(self) -> None:
        while True:
            for node in sorted(self.beating):
                await self.send(node)
            await asyncio.sleep(self.interval)  # the agents' own rhythm, not a wait


# -- services under test -------------------------------------------------------------------------
class Services:
    """Starts services as tasks, each on its own Bus; cancels and closes them all at teardown."""

    def __init__(self, url: str, subjects: Subjects) -> None:
        self.url, self.subjects = url, subjects
        self.tasks: list[asyncio.Task[Any]] = []
        self.buses: list[Bus] = []

    async def bus(self, service: str, name: str) -> Bus:
        bus = await Bus.connect([self.url], self.subjects, service, name=name, persistent=False)
        self.buses.append(bus)
        return bus

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        async def main() -> Any:
            return await coro

        task = asyncio.create_task(main(), name=name)
        self.tasks.append(task)
        return task

    async def aclose(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for bus in reversed(self.buses):
            await bus.close()
        for task, result in zip(self.tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise AssertionError(f"service task {task.get_name()} crashed") from result


@pytest.fixture
async def services(nats_url: str, subjects: Subjects, client: Client) -> AsyncIterator[Services]:
    """Depends on ``client`` so that services (and fake agents) stop before it closes."""
    svc = Services(nats_url, subjects)
    try:
        yield svc
    finally:
        await svc.aclose()
