"""Integration fixtures: one real nats-server (JetStream on) per test module, and helpers.

Every test isolates itself with its own subject root (buckets and the event stream derive from
it), so the tests of a module share the server but never each other's state. Tests assert by
awaiting an event with a deadline, never by sleeping until something has probably happened.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any
from uuid import uuid4

import msgspec
import nats
import pytest
from nats.aio.client import Client

from vigil.core.bus import Bus, now
from vigil.core.config import load_data
from vigil.core.subjects import Subjects
from vigil.testing.events import DEADLINE, Recorder, of
from vigil.testing.server import NatsServer
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import Heartbeat

__all__ = ["DEADLINE", "Recorder", "of"]


# -- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of our own per module (free port, own store), stopped by its PID."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as url:
        yield url


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


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    """The test's own connection: for publishing as a fake node and for watching."""
    nc = await nats.connect(nats_url, name="integration-test")
    try:
        yield nc
    finally:
        await nc.close()


async def record(nc: Client, subject: str) -> Recorder:
    """Every event on ``subject`` from now on (the subscription is on the server when this
    returns)."""
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
STOP_DEADLINE = 30.0  # seconds for every service task to end once cancelled


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
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=STOP_DEADLINE)
            if pending:  # a task that ignores its cancellation: say where every task is
                for task in asyncio.all_tasks():
                    print(f"-- task {task.get_name()}", file=sys.stderr)
                    task.print_stack(file=sys.stderr)
                names = sorted(t.get_name() for t in pending)
                raise AssertionError(f"service tasks did not stop when cancelled: {names}")
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
