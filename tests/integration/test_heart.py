"""The node's heart keeps its lease while the address service's loop is busy: heartbeats and
fence renewals run on a thread, loop and connection of their own (docs/security.md, "Floods")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address

from nats.aio.msg import Msg

from vigil.address.heart import Beat, Heart
from vigil.core.bus import Bus, encode
from vigil.core.clusterconfig import store
from vigil.core.subjects import Subjects
from vigil.membership.service import Membership
from vigil.wire.events import LeaseGranted

from .conftest import DEADLINE, Services, make_spec

HEARTBEAT, LEASE = 0.2, 2.0  # a fence of 1.6 s: eight heartbeats in a row must fail to lapse
VIP = IPv4Address("192.0.2.10")


class RecordingFence:
    """Every renewal: when it was made (monotonic), what it leased and for how long."""

    def __init__(self) -> None:
        self.renewals: list[tuple[float, list[IPv4Address], int]] = []

    async def install(self, vips: Iterable[IPv4Address]) -> None:
        pass

    async def renew(
        self, leased: Iterable[IPv4Address], ttl_ms: int, vips: Iterable[IPv4Address]
    ) -> None:
        self.renewals.append((time.monotonic(), list(leased), ttl_ms))


class MembershipAside:
    """The real membership service on a thread and loop of its own: the test blocks its own."""

    def __init__(self, url: str, subjects: Subjects) -> None:
        self.url, self.subjects = url, subjects
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(target=asyncio.run, args=(self.main(),), daemon=True)

    async def main(self) -> None:
        bus = await Bus.connect([self.url], self.subjects, "membership", name="m1")
        try:
            self.loop = asyncio.get_running_loop()
            self.task = asyncio.create_task(Membership(bus).run())
            self.ready.set_result(None)
            await asyncio.gather(self.task, return_exceptions=True)
        finally:
            await bus.close()

    async def start(self) -> None:
        self.thread.start()
        await asyncio.wrap_future(self.ready)

    async def stop(self) -> None:
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        await asyncio.to_thread(self.thread.join)


class Beats:
    """What the heart told this loop (its callbacks run only while this loop awaits)."""

    def __init__(self) -> None:
        self.seen: list[Beat] = []
        self.changed = asyncio.Event()

    def __call__(self, beat: Beat) -> None:
        self.seen.append(beat)
        self.changed.set()

    async def until(self, probe: Callable[[list[Beat]], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not probe(self.seen):
                self.changed.clear()
                await self.changed.wait()


def lapses(renewals: list[tuple[float, list[IPv4Address], int]], until: float) -> list[str]:
    """Every moment from the first lease of ``VIP`` to ``until`` that ``VIP`` was not leased."""
    leases = [(at, at + ttl / 1000) for at, leased, ttl in renewals if VIP in leased]
    gaps = [
        f"{end:.3f} -> {nxt:.3f}" for (_, end), (nxt, _) in itertools.pairwise(leases) if nxt > end
    ]
    if leases and leases[-1][1] < until:
        gaps.append(f"{leases[-1][1]:.3f} -> past {until:.3f}")
    return gaps


async def test_the_heart_keeps_the_lease_while_the_service_loop_is_blocked(
    nats_url: str, services: Services, subjects: Subjects
) -> None:
    cli = await services.bus("cli", "test")
    await store(cli, make_spec(["n1"], heartbeat=f"{HEARTBEAT}s", lease=f"{LEASE}s"))
    membership = MembershipAside(nats_url, subjects)
    await membership.start()
    fence = RecordingFence()
    beats = Beats()
    heart = Heart(
        await services.bus("address", "n1"), "n1", fence, lambda: (HEARTBEAT, LEASE), beats
    )
    try:
        await heart.start()
        services.spawn(heart.beating(), "heart-n1")
        await beats.until(lambda seen: any(b.granted for b in seen))
        await heart.hold([VIP], [VIP], beats.seen[-1].generation)
        assert fence.renewals[-1][1] == [VIP]

        # The service's loop busy for more than two leases (a flood being decoded, a slow
        # handler): nothing on it runs, the heart's thread beats on.
        busy_until = time.monotonic() + 2.5 * LEASE
        while time.monotonic() < busy_until:
            pass
        # The heart told this loop about every heartbeat meanwhile (queued until now): none
        # let go of the lease.
        await beats.until(lambda seen: seen[-1].expiry > busy_until)
        assert [b.drop for b in beats.seen if b.drop] == []
        assert lapses(fence.renewals, busy_until) == []
        assert heart.generation == 0 and heart.incarnation == 1
    finally:
        await heart.stop()
        await membership.stop()


class Granter:
    """A stand-in membership: answers each heartbeat with a grant of ``incarnation``, unless
    it is ``silent`` (a heartbeat lost to a server's death, a membership unreachable)."""

    def __init__(self, bus: Bus, node: str) -> None:
        self.bus, self.node = bus, node
        self.incarnation, self.silent = 1, False

    async def start(self) -> None:
        await self.bus.nc.subscribe(self.bus.subjects.heartbeat(self.node), cb=self.on_beat)

    async def on_beat(self, msg: Msg) -> None:
        if not self.silent:
            grant = LeaseGranted(
                **self.bus.stamp(), node=self.node, incarnation=self.incarnation, ttl=60.0
            )
            await msg.respond(encode(grant))

    async def silence(self, seconds: float) -> None:
        self.silent = True
        await asyncio.sleep(seconds)  # the length of the fault is the point of the test
        self.silent = False


async def test_a_lapse_lets_go_at_once_even_when_the_next_grant_keeps_the_incarnation(
    services: Services,
) -> None:
    """A fence that lapsed lets go of everything on the next heartbeat's outcome, even a short
    lapse followed by a grant for the same incarnation (no replica declared the node lost):
    while a lapsed node keeps its address on the interface, its supervisor, reconnecting with
    stale caches, may start a restart group's app beside the one its replacement started (a
    review of a "grace" that renewed such lapses; docs/safety.md, "A lapse releases
    everything"). A grant for a new incarnation lets go too."""
    heartbeat, lease = 0.1, 0.5  # the fence lasts 0.3 s
    fence, beats = RecordingFence(), Beats()
    granter = Granter(await services.bus("membership", "m1"), "n1")
    await granter.start()
    heart = Heart(
        await services.bus("address", "n1"), "n1", fence, lambda: (heartbeat, lease), beats
    )

    async def held_then(silent: float) -> list[Beat]:
        await beats.until(lambda seen: bool(seen) and seen[-1].granted)
        await heart.hold([VIP], [VIP], beats.seen[-1].generation)
        assert fence.renewals[-1][1] == [VIP]
        mark = len(beats.seen)
        await granter.silence(silent)
        await beats.until(lambda seen: len(seen) > mark and seen[-1].granted)
        return beats.seen[mark:]

    try:
        await heart.start()
        services.spawn(heart.beating(), "heart-n1")
        short = await held_then(0.6)  # past the fence (0.3 s), shorter than the lease
        assert [b.drop for b in short if b.drop] == ["lease lapsed"]
        assert fence.renewals[-1][1] == [], "a lapsed lease was taken up again"
        assert {b.incarnation for b in short} == {1}

        granter.incarnation = 2  # declared lost while it was silent, and rejoined
        lost = await held_then(0.0)  # no lapse (no beat is missed): only the incarnation says it
        assert [b.drop for b in lost if b.drop] == [
            "membership declared n1 lost; now incarnation 2"
        ]
        assert fence.renewals[-1][1] == []
    finally:
        await heart.stop()
