"""Events are hints, the stored record is the truth, and stuck states heal (issue 10, item 3).

Each test reproduces a state the randomized fault runs left stuck, against a real nats-server,
with real placement / supervisor / membership services and the test standing in for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import NoStreamResponseError
from nats.js.kv import KeyValue

from vigil.core.bus import encode, get_record, kv, now
from vigil.core.clusterconfig import store
from vigil.core.subjects import Subjects, address_key, app_key
from vigil.placement.service import PlacementService, release_bound
from vigil.supervisor import service as supervisor_service
from vigil.supervisor.service import Supervisor
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    AppStarted,
    AppStopped,
    NodeJoined,
    PlacementDecided,
)
from vigil.wire.records import AddressStatus, AppStatus, Intent, NodeRecord, Placement

from .conftest import DEADLINE, Hearts, Recorder, Services, group, make_spec, of, record
from .test_membership import ProbedMembership

NODES = ["n1", "n2", "n3"]
LEASE = 0.25
ADDRESS = "10.213.77.1/24"


def here() -> set[IPv4Address]:
    """The kernel as n1's supervisor sees it here: g1's address is on n1 (the address service
    stood in for by the test says when it holds it; this host does not have it)."""
    return {IPv4Interface(ADDRESS).ip}


def spec(**extra: Any) -> ClusterSpec:
    return make_spec(NODES, [{**group("g1", ADDRESS, "n1", ["n2", "n3"]), **extra}])


class Stage:
    """The buckets as membership and the address services would have left them."""

    def __init__(self, services: Services, subjects: Subjects) -> None:
        self.services, self.s = services, subjects

    async def open(self, cluster: ClusterSpec) -> Stage:
        cli = await self.services.bus("cli", "test")
        await store(cli, cluster)
        self.nodes = await kv(cli, self.s.bucket_nodes)
        self.placement = await kv(cli, self.s.bucket_placement)
        self.observed = await kv(cli, self.s.bucket_observed)
        self.intents = await kv(cli, self.s.bucket_intents)
        self.cli = cli
        return self

    async def up(self, *nodes: str) -> None:
        for n in nodes:
            await self.nodes.put(n, encode(NodeRecord(name=n, state="up", since=now())))

    async def placed(self, node: str | None, epoch: int, **fields: Any) -> None:
        await self.placement.put("g1", encode(Placement("g1", node, epoch, "test", **fields)))

    async def running_on_n1(self, client: Client, tmp_path: Path) -> tuple[Recorder, AppStarted]:
        """Every node up, g1 placed on n1 at epoch 3 with its address held there, and n1's
        supervisor started on it: n1's app events, and g1's start."""
        await self.up(*NODES)
        await self.placed("n1", 3)
        await self.held("n1", 3)
        apps = await record(client, self.s.all_app_events("n1"))
        sup = Supervisor(await self.services.bus("supervisor", "n1"), "n1", tmp_path, here)
        self.services.spawn(sup.run(), "supervisor-n1")
        return apps, await apps.expect(of(AppStarted, group="g1", epoch=3))

    async def held(self, node: str, epoch: int, held: bool = True) -> None:
        status = AddressStatus("g1", node, ADDRESS, held, epoch)
        await self.observed.put(address_key(node, "g1"), encode(status))


class FlakyPuts:
    """Makes the supervisor's ``observed`` bucket refuse one chosen write the way JetStream does
    while the stream elects a leader ('no response from stream'): deterministic, where killing
    a server of a cluster is not."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, bucket: str) -> None:
        self.armed: Callable[[str, AppStatus], bool] | None = None
        self.refused: list[AppStatus] = []
        real_kv = kv

        async def kv_(bus: Any, name: str) -> KeyValue:
            opened = await real_kv(bus, name)
            if name == bucket:
                put = opened.put

                async def flaky(key: str, value: bytes, **kw: Any) -> int:
                    status = msgspec.json.decode(value, type=AppStatus)
                    if self.armed is not None and self.armed(key, status):
                        self.armed = None
                        self.refused.append(status)
                        raise NoStreamResponseError
                    return await put(key, value, **kw)

                opened.put = flaky  # type: ignore[method-assign,assignment]
            return opened

        monkeypatch.setattr(supervisor_service, "kv", kv_)


async def record_comes(
    bucket: KeyValue, key: str, wanted: Callable[[AppStatus], bool], timeout: float = DEADLINE
) -> AppStatus:
    """The record of ``key`` once it says what is ``wanted`` (watched, not polled)."""
    watcher = await bucket.watch(key)
    try:
        async with asyncio.timeout(timeout):
            async for entry in watcher:
                if entry is not None and entry.value:
                    status = msgspec.json.decode(entry.value, type=AppStatus)
                    if wanted(status):
                        return status
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    raise AssertionError(f"the watch of {key} ended")


async def test_a_stop_whose_record_failed_to_be_written_is_recorded_all_the_same(
    client: Client,
    services: Services,
    subjects: Subjects,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record left saying "running" on n1 keeps every other node from starting g1: its
    failed write must be repeated until it is stored."""
    s = subjects
    flaky = FlakyPuts(monkeypatch, s.bucket_observed)
    stage = await Stage(services, s).open(spec())
    apps, _ = await stage.running_on_n1(client, tmp_path)
    await record_comes(stage.observed, app_key("n1", "g1"), lambda a: a.running)

    flaky.armed = lambda key, status: key == app_key("n1", "g1") and not status.running
    await stage.placed("n2", 4)
    await apps.expect(of(AppStopped, group="g1", epoch=3))
    stored = await record_comes(stage.observed, app_key("n1", "g1"), lambda a: not a.running)
    assert flaky.refused and not flaky.refused[0].running, flaky.refused
    assert stored.epoch == 3 and not stored.stop_failed, stored


async def test_a_start_whose_record_failed_to_be_written_keeps_its_app_and_records_it(
    client: Client,
    services: Services,
    subjects: Subjects,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transient bus error is not the app's failure: it is not stopped, and its record is
    written once the bucket answers."""
    s = subjects
    flaky = FlakyPuts(monkeypatch, s.bucket_observed)
    flaky.armed = lambda key, status: key == app_key("n1", "g1") and status.running
    stage = await Stage(services, s).open(spec())
    apps, started = await stage.running_on_n1(client, tmp_path)
    stored = await record_comes(stage.observed, app_key("n1", "g1"), lambda a: a.running)
    assert flaky.refused and flaky.refused[0].running, flaky.refused
    assert (stored.epoch, stored.pid) == (3, started.pid), (stored, started)
    await apps.none_within(of(AppStopped, group="g1"), since=apps.after(started), timeout=1.0)
    assert len(apps.matching(of(AppStarted, group="g1"))) == 1


async def test_a_stray_placement_event_with_a_big_epoch_changes_nothing(
    client: Client, services: Services, subjects: Subjects, tmp_path: Path
) -> None:
    s = subjects
    stage = await Stage(services, s).open(spec())
    apps, started = await stage.running_on_n1(client, tmp_path)

    stray = PlacementDecided(
        source="placement@nowhere", seq=1, ts=now(), group="g1", node=None, previous="n1",
        epoch=999, reason="not backed by the bucket",
    )  # fmt: skip
    await client.publish(s.placement("g1"), msgspec.json.encode(stray))
    await apps.none_within(of(AppStopped, group="g1"), since=apps.after(started), timeout=1.0)

    # The bucket is what counts: a real decision stops it.
    await stage.placed(None, 4)
    await apps.expect(of(AppStopped, group="g1"), since=apps.after(started))


async def test_enable_on_a_running_group_does_not_restart_its_app(
    client: Client, services: Services, subjects: Subjects, tmp_path: Path
) -> None:
    s = subjects
    stage = await Stage(services, s).open(spec())
    await stage.up(*NODES)
    await stage.placed("n1", 3, switching=False)
    await stage.held("n1", 3)
    apps = await record(client, s.all_app_events("n1"))
    placements = await record(client, s.all_placements)
    sup = Supervisor(await services.bus("supervisor", "n1"), "n1", tmp_path, here)
    services.spawn(sup.run(), "supervisor-n1")
    services.spawn(PlacementService(await services.bus("placement", "p1")).run(), "placement")
    started = await apps.expect(of(AppStarted, group="g1", epoch=3))

    await stage.intents.put("g1", encode(Intent("g1", enable_id=1)))
    enabled = await placements.expect(of(PlacementDecided, group="g1", node="n1"))
    assert enabled.epoch == 3 and "enabled" in enabled.reason, enabled
    stored = await get_record(stage.placement, "g1", Placement)
    assert stored is not None and stored.switching and stored.enable_id == 1
    await apps.none_within(of(AppStopped), since=apps.after(started), timeout=1.0)


async def test_enable_after_halting_on_the_last_node_ends_placed(
    client: Client, services: Services, subjects: Subjects
) -> None:
    """g1 halted on n3, its last node, when n3 was lost; n3's address service dropped the
    address at its lease lapse without recording it (the record still says held). Every node
    is back. `vigil enable` must end with g1 placed, not `-> None` for good."""
    s = subjects
    stage = await Stage(services, s).open(spec())
    await stage.up(*NODES)
    await stage.placed(None, 5, switching=False)
    await stage.held("n3", 4)  # stale: never recorded released
    placements = await record(client, s.all_placements)
    services.spawn(PlacementService(await services.bus("placement", "p1")).run(), "placement")
    await stage.intents.put("g1", encode(Intent("g1", enable_id=1)))
    enabled = await placements.expect(of(PlacementDecided, group="g1", epoch=5))
    assert enabled.node is None and "enabled" in enabled.reason
    # Either n3 records the release (its address service's repair) and g1 goes to n1, or the
    # release never comes and g1 goes back to the node that holds its address.
    bound = release_bound(LEASE)
    placed = await placements.expect(
        of(PlacementDecided, group="g1", epoch=6), timeout=bound + DEADLINE
    )
    assert placed.node == "n3" and "did not release" in placed.reason, placed
    # The release recorded: on the next decision it goes where it belongs.
    await stage.held("n3", 6, held=False)


async def test_a_failback_whose_release_never_comes_ends_placed(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    stage = await Stage(services, s).open(spec(failback="auto", failback_delay="10ms"))
    await stage.up(*NODES)
    await stage.placed("n2", 2)
    await stage.held("n2", 2)
    placements = await record(client, s.all_placements)
    services.spawn(PlacementService(await services.bus("placement", "p1")).run(), "placement")
    back = await placements.expect(of(PlacementDecided, group="g1", epoch=3))
    assert (back.node, back.moving_to) == (None, "n1") and "failback" in back.reason
    placed = await placements.expect(
        of(PlacementDecided, group="g1", epoch=4), timeout=release_bound(LEASE) + DEADLINE
    )
    assert placed.node == "n2" and "did not release" in placed.reason, placed


async def test_a_failback_whose_release_is_recorded_lands_on_the_preferred_node(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    stage = await Stage(services, s).open(spec(failback="auto", failback_delay="10ms"))
    await stage.up(*NODES)
    await stage.placed("n2", 2)
    await stage.held("n2", 2)
    placements = await record(client, s.all_placements)
    services.spawn(PlacementService(await services.bus("placement", "p1")).run(), "placement")
    await placements.expect(of(PlacementDecided, group="g1", epoch=3, node=None))
    await stage.held("n2", 3, held=False)
    placed = await placements.expect(of(PlacementDecided, group="g1", epoch=4))
    assert placed.node == "n1", placed


async def test_a_garbage_placement_record_is_rewritten_by_placement(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    stage = await Stage(services, s).open(spec())
    await stage.up(*NODES)
    await stage.placement.put("g1", b"\x00not json")
    placements = await record(client, s.all_placements)
    services.spawn(PlacementService(await services.bus("placement", "p1")).run(), "placement")
    placed = await placements.expect(of(PlacementDecided, group="g1"))
    assert placed.node == "n1"
    stored = await get_record(stage.placement, "g1", Placement)
    assert stored is not None and stored.node == "n1"


async def test_a_garbage_node_record_does_not_stop_the_node_joining(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    stage = await Stage(services, s).open(make_spec(["n1", "n2"]))
    await stage.nodes.put("n1", b"garbage")
    events = await record(client, s.all_node_events)
    m = ProbedMembership(await services.bus("membership", "m1"))
    services.spawn(m.run(), "membership")
    hearts = Hearts(client, s)
    hearts.beating = {"n1", "n2"}
    services.spawn(hearts.run(), "hearts")
    await events.expect(of(NodeJoined, node="n1"))
    stored = await get_record(stage.nodes, "n1", NodeRecord)
    assert stored is not None and stored.state == "up"


async def caches_running(sup: Supervisor) -> None:
    """Until the supervisor's caches run: it subscribed to its events before, so one published
    now reaches it (a single publication sent earlier could be lost)."""
    async with asyncio.timeout(DEADLINE):
        while True:  # the supervisor has no event for it
            if getattr(sup, "placements", None) is not None and sup.placements.get("g1"):
                break
            await asyncio.sleep(0.02)


async def test_the_app_follows_its_address_service_s_word_while_the_record_cannot_be_stored(
    client: Client, services: Services, subjects: Subjects, tmp_path: Path
) -> None:
    """The node we take over from may take a NATS server with it: the observed bucket then has
    no leader for the 4-9 s of its election, and our address service's records cannot be
    stored. Its events (on our own node's subject) are then newer than the records: an
    acquisition for the epoch the placement bucket names starts the app (before, the app
    waited for the record, clients refused for seconds); a release (the address dropped at a
    lease lapse) keeps the app from starting on the stale record "held" (before, the app
    started on a missing address, failed four times and was banned from the node)."""
    s = subjects
    stage = await Stage(services, s).open(spec())
    await stage.up(*NODES)
    await stage.placed("n1", 3)
    await stage.held("n1", 2, held=False)  # the record left from before: released at epoch 2
    apps = await record(client, s.all_app_events("n1"))
    sup = Supervisor(await services.bus("supervisor", "n1"), "n1", tmp_path, here)
    services.spawn(sup.run(), "supervisor-n1")
    await caches_running(sup)

    async def say(kind: type[AddressAcquired | AddressReleased], epoch: int) -> None:
        event = kind(
            source="address@n1", seq=epoch, ts=now(), group="g1", node="n1", address=ADDRESS,
            epoch=epoch,
        )  # fmt: skip
        what = "acquired" if kind is AddressAcquired else "released"
        await client.publish(s.address("n1", "g1", what), msgspec.json.encode(event))

    # A word for an older epoch than the placement's starts nothing.
    mark = apps.mark()
    await say(AddressAcquired, 2)
    await apps.none_within(of(AppStarted, group="g1"), since=mark, timeout=1.0)
    await say(AddressAcquired, 3)
    started = await apps.expect(of(AppStarted, group="g1", epoch=3))
    # The record catches up (the supervisor has it), then the address is dropped and that
    # record cannot be stored.
    key = address_key("n1", "g1")
    revision = await stage.observed.put(key, encode(AddressStatus("g1", "n1", ADDRESS, True, 3)))
    async with asyncio.timeout(DEADLINE):
        while True:
            if (sup.addresses.revision(key) or 0) >= revision:
                break
            await asyncio.sleep(0.02)
    await say(AddressReleased, 3)
    stopped = await apps.expect(of(AppStopped, group="g1"), since=apps.after(started))
    await apps.none_within(of(AppStarted, group="g1"), since=apps.after(stopped), timeout=1.0)
    await say(AddressAcquired, 3)  # the lease back: acquired again
    await apps.expect(of(AppStarted, group="g1", epoch=3), since=apps.after(stopped))


async def test_an_acquisition_newer_than_the_cached_placement_is_read_from_the_bucket(
    client: Client, services: Services, subjects: Subjects, tmp_path: Path
) -> None:
    """After a leader election a watch may lag for seconds (a chaos run: the address was held,
    the app started 11 s later). Our address service acquires only after reading the placement
    from the bucket, so its word for a newer epoch than our cache holds sends the supervisor to
    the bucket: the app starts on the stored decision, not on the lagging watch."""
    s = subjects
    stage = await Stage(services, s).open(spec())
    await stage.up(*NODES)
    await stage.placed(None, 2)
    apps = await record(client, s.all_app_events("n1"))
    sup = Supervisor(await services.bus("supervisor", "n1"), "n1", tmp_path, here)
    services.spawn(sup.run(), "supervisor-n1")
    await caches_running(sup)
    # The watch stalls (here: stops), then the decision and the acquisition come.
    watches = [t for t in asyncio.all_tasks() if t.get_name().startswith("watch-")]
    lagging = [t for t in watches if s.bucket_placement in t.get_name()]
    assert lagging, [t.get_name() for t in watches]
    for task in lagging:
        task.cancel()
    await stage.placed("n1", 3)
    await stage.held("n1", 3)
    event = AddressAcquired(
        source="address@n1", seq=1, ts=now(), group="g1", node="n1", address=ADDRESS, epoch=3
    )
    await client.publish(s.address("n1", "g1", "acquired"), msgspec.json.encode(event))
    await apps.expect(of(AppStarted, group="g1", epoch=3))


async def test_the_app_starts_only_where_the_kernel_has_its_address(
    client: Client, services: Services, subjects: Subjects, tmp_path: Path
) -> None:
    """The records and events say "held" (a stale record that could not be rewritten while the
    bucket elected a leader, its correcting event lost across a restarting server), the kernel
    says the address is not here: the app is not started (it would fail to bind, again and
    again, and be banned from the node: a chaos run). Once the address is on the node it is."""
    s = subjects
    stage = await Stage(services, s).open(spec())
    await stage.up(*NODES)
    await stage.placed("n1", 3)
    await stage.held("n1", 3)
    kernel: set[IPv4Address] = set()
    apps = await record(client, s.all_app_events("n1"))
    sup = Supervisor(await services.bus("supervisor", "n1"), "n1", tmp_path, lambda: set(kernel))
    services.spawn(sup.run(), "supervisor-n1")
    await apps.none_within(of(AppStarted, group="g1"), since=0, timeout=1.5)
    kernel.add(IPv4Interface(ADDRESS).ip)
    await apps.expect(of(AppStarted, group="g1", epoch=3))
