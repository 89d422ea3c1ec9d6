"""Placement against a real nats-server: node events and node records in, decisions out.

Membership is simulated: the test writes NodeRecord values into the nodes bucket and publishes
NodeJoined / NodeLost, as membership would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from vigil.core.bus import encode, get_record, kv, now
from vigil.core.clusterconfig import store
from vigil.core.errors import Conflict
from vigil.core.reconciler import RESYNC
from vigil.core.subjects import Subjects, address_key
from vigil.placement.service import PlacementService
from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    Alert,
    Event,
    NodeJoined,
    NodeLost,
    PlacementDecided,
    SwitchingDisabled,
)
from vigil.wire.records import AddressStatus, NodeRecord, NodeState, Placement

from .conftest import DEADLINE, Recorder, Services, group, make_spec, of, record

NODES = ["n1", "n2", "n3"]
LEASE = 0.25  # make_spec's default timing: heartbeat 50ms, lease 250ms
WEB1 = group("web1", "10.213.77.1/24", "n1", ["n2", "n3"])


class Cluster:
    """The test's stand-in for membership, plus the placement services under test."""

    def __init__(self, client: Client, subjects: Subjects, nodes: KeyValue) -> None:
        self.client, self.s, self.nodes = client, subjects, nodes
        self._seq = 0

    async def set_node(self, node: str, state: NodeState) -> None:
        """Record the node's state, then announce it: what membership does on a transition."""
        await self.nodes.put(node, encode(NodeRecord(name=node, state=state, since=now())))
        await self.announce(node, state)

    async def announce(self, node: str, state: NodeState) -> None:
        self._seq += 1
        stamp: dict[str, Any] = {"source": "membership@test", "seq": self._seq, "ts": now()}
        data: Event
        if state == "up":
            subject, data = self.s.node_joined(node), NodeJoined(**stamp, node=node)
        else:
            subject, data = self.s.node_lost(node), NodeLost(**stamp, node=node, silent_for=0.3)
        await self.client.publish(subject, msgspec.json.encode(data))


class ProbedPlacement(PlacementService):
    """Placement with a probe: ``address_seen`` is set once it has handled an address event."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.address_seen = asyncio.Event()

    async def on_address(self, event: AddressAcquired | AddressReleased) -> None:
        await super().on_address(event)
        self.address_seen.set()


async def start_placement(
    services: Services,
    client: Client,
    subjects: Subjects,
    replicas: int = 1,
    up: list[str] = NODES,
) -> tuple[Cluster, Recorder, KeyValue, list[ProbedPlacement]]:
    """A 3-node spec with web1 (n1, then n2, n3), the ``up`` nodes up, ``replicas`` placements."""
    s = subjects
    cli = await services.bus("cli", "test")
    await store(cli, make_spec(NODES, [WEB1]))
    cluster = Cluster(client, s, await kv(cli, s.bucket_nodes))
    for n in up:
        await cluster.set_node(n, "up")
    rec = await record(client, s.all_placements)
    placements = []
    for i in range(replicas):
        p = ProbedPlacement(await services.bus("placement", f"p{i + 1}"))
        services.spawn(p.run(), f"placement-p{i + 1}")
        placements.append(p)
    return cluster, rec, await kv(cli, s.bucket_placement), placements


async def expect_decision(
    rec: Recorder, bucket: KeyValue, node: str | None, previous: str | None, epoch: int
) -> PlacementDecided:
    decided: PlacementDecided = await rec.expect(of(PlacementDecided, group="web1", epoch=epoch))
    assert (decided.node, decided.previous) == (node, previous), decided
    stored = await get_record(bucket, "web1", Placement)
    assert stored is not None
    assert (stored.node, stored.epoch) == (node, epoch)
    return decided


@pytest.mark.parametrize("replicas", [1, 2])
async def test_failover_walks_the_sequenced_list_then_halts(
    client: Client, services: Services, subjects: Subjects, replicas: int
) -> None:
    s = subjects
    cluster, rec, bucket, placements = await start_placement(services, client, s, replicas)
    alerts = await record(client, s.alert("web1"))
    disabled = await record(client, s.group_event("web1", "switching_disabled"))

    first = await expect_decision(rec, bucket, "n1", None, 1)
    assert "preferred" in first.reason
    await cluster.set_node("n1", "lost")
    second = await expect_decision(rec, bucket, "n2", "n1", 2)
    assert "n1 lost" in second.reason
    await cluster.set_node("n2", "lost")
    await expect_decision(rec, bucket, "n3", "n2", 3)
    # n3 is the last eligible node of the list: switching goes off, announced once.
    await disabled.expect(of(SwitchingDisabled, group="web1", node="n3", epoch=3))
    await alerts.expect(of(Alert, kind="switching_disabled", group="web1", node="n3"))
    await cluster.set_node("n3", "lost")
    last = await expect_decision(rec, bucket, None, "n3", 4)

    # The cluster comes back; with switching disabled the group stays halted until an
    # operator runs `vigil enable` (see services/placement/rules.py).
    await cluster.set_node("n2", "up")
    await cluster.set_node("n1", "up")
    await rec.none_within(of(PlacementDecided), since=rec.after(last), timeout=0.4)
    stored = await get_record(bucket, "web1", Placement)
    assert stored is not None and (stored.node, stored.epoch) == (None, 4)

    # Every epoch was decided (and published) exactly once, even with two replicas racing.
    decided = rec.matching(of(PlacementDecided))
    epochs = Counter(e.epoch for e in decided if isinstance(e, PlacementDecided))
    assert epochs == Counter({1: 1, 2: 1, 3: 1, 4: 1})
    assert {e.source for e in rec.events} <= {p.bus.source for p in placements}
    assert len(disabled.events) == 1 and len(alerts.events) == 1


async def test_failback_is_manual(client: Client, services: Services, subjects: Subjects) -> None:
    cluster, rec, bucket, _ = await start_placement(services, client, subjects)

    await expect_decision(rec, bucket, "n1", None, 1)
    await cluster.set_node("n1", "lost")
    moved = await expect_decision(rec, bucket, "n2", "n1", 2)

    await cluster.set_node("n1", "up")  # the preferred node is back: the group stays on n2
    await rec.none_within(of(PlacementDecided), since=rec.after(moved), timeout=0.4)
    stored = await get_record(bucket, "web1", Placement)
    assert stored is not None and (stored.node, stored.epoch) == ("n2", 2)

    # The next move is epoch 3 (nothing happened in between), to the node *after* n2.
    await cluster.set_node("n2", "lost")
    await expect_decision(rec, bucket, "n3", "n2", 3)


async def test_a_decision_on_a_stale_snapshot_loses_its_compare_and_set(
    client: Client, services: Services, subjects: Subjects
) -> None:
    """Another replica wrote after our snapshot: our write, decided on the older record, must
    fail (and publish nothing), not overwrite the newer one (it did, and alerted twice)."""
    _, rec, bucket, (p,) = await start_placement(services, client, subjects)
    await expect_decision(rec, bucket, "n1", None, 1)
    seen = p.placements.get("web1")
    read_at = p.placements.revision("web1")
    assert seen is not None and read_at is not None
    theirs = msgspec.structs.replace(seen, reason="the other replica's")
    await bucket.update("web1", encode(theirs), last=read_at)
    assert await p.placements.reread("web1") == theirs  # our cache has their write
    mark = rec.mark()
    ours = msgspec.structs.replace(seen, node="n2", epoch=seen.epoch + 1, reason="stale")
    with pytest.raises(Conflict):
        await p.commit(ours, seen, read_at)
    stored = await get_record(bucket, "web1", Placement)
    assert stored == theirs
    await rec.none_within(of(PlacementDecided, reason="stale"), since=mark, timeout=0.2)


async def test_a_missing_preferred_node_gets_time_to_join(
    client: Client, services: Services, subjects: Subjects
) -> None:
    started = time.monotonic()
    _, rec, bucket, _ = await start_placement(services, client, subjects, up=["n2", "n3"])
    decided = await expect_decision(rec, bucket, "n2", None, 1)
    # Not before the cluster settled: 3 leases after placement started (then the next resync).
    assert time.monotonic() - started >= 3 * LEASE
    assert decided.reason.startswith("preferred node")


async def test_a_group_moved_off_its_list_is_placed_again_only_once_its_address_is_released(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    _, rec, bucket, (p,) = await start_placement(services, client, s)
    await expect_decision(rec, bucket, "n1", None, 1)

    # The address service on n1 holds web1's address (bucket and event, as it would).
    address = WEB1["address"]
    held = AddressStatus("web1", "n1", address, True, 1)
    observed = await kv(p.bus, s.bucket_observed)
    await observed.put(address_key("n1", "web1"), encode(held))
    stamp: dict[str, Any] = {"source": "address@n1", "ts": now()}
    acquired = AddressAcquired(**stamp, seq=1, group="web1", node="n1", address=address, epoch=1)
    await client.publish(s.address("n1", "web1", "acquired"), msgspec.json.encode(acquired))
    await asyncio.wait_for(p.address_seen.wait(), DEADLINE)

    # The operator takes n1 out of web1's list: release first ...
    cli = await services.bus("cli", "test2")
    await store(cli, make_spec(NODES, [group("web1", address, "n2", ["n3"])]))
    released = await expect_decision(rec, bucket, None, "n1", 2)
    assert "no longer in the group's list" in released.reason
    # ... and place it again only once n1 no longer holds the address.
    await rec.none_within(of(PlacementDecided), since=rec.after(released), timeout=RESYNC + 0.2)
    await observed.put(
        address_key("n1", "web1"), encode(AddressStatus("web1", "n1", address, False, 2))
    )
    gone = AddressReleased(**stamp, seq=2, group="web1", node="n1", address=address, epoch=2)
    await client.publish(s.address("n1", "web1", "released"), msgspec.json.encode(gone))
    placed = await expect_decision(rec, bucket, "n2", None, 3)
    assert "preferred" in placed.reason


async def test_a_group_removed_from_the_file_is_released(
    client: Client, services: Services, subjects: Subjects
) -> None:
    _, rec, bucket, _ = await start_placement(services, client, subjects)
    await expect_decision(rec, bucket, "n1", None, 1)
    cli = await services.bus("cli", "test2")
    await store(cli, make_spec(NODES, [group("web2", "10.213.77.2/24", "n2", [])]))
    web1 = await rec.expect(of(PlacementDecided, group="web1", epoch=2))
    assert web1.node is None and "removed" in web1.reason
    await rec.expect(of(PlacementDecided, group="web2", node="n2", epoch=1))


STALE = "BUG: PlacementService.on_node trusts any node event over the nodes bucket"


async def test_a_late_node_joined_does_not_revive_a_dead_node(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    cli = await services.bus("cli", "test")
    # web1 prefers n2; n1 comes right after it in its list.
    await store(cli, make_spec(NODES, [group("web1", "10.213.77.1/24", "n2", ["n1", "n3"])]))
    cluster = Cluster(client, s, await kv(cli, s.bucket_nodes))
    for n in NODES:
        await cluster.set_node(n, "up")
    rec = await record(client, s.all_placements)
    services.spawn(PlacementService(await services.bus("placement", "p1")).run(), "placement")
    bucket = await kv(cli, s.bucket_placement)
    await expect_decision(rec, bucket, "n2", None, 1)
    await cluster.set_node("n1", "lost")

    # A NodeJoined for n1 from before it died arrives late (say a membership replica flushes
    # its reconnect buffer). The nodes bucket, written after it, says n1 is lost.
    record_ = await get_record(cluster.nodes, "n1", NodeRecord)
    assert record_ is not None and record_.state == "lost"
    late = NodeJoined(
        source="membership@m2", seq=1, ts=record_.since - timedelta(seconds=10), node="n1"
    )
    await client.publish(s.node_joined("n1"), msgspec.json.encode(late))

    # n2 dies (recorded, then announced on the same connection as the late event, so
    # placement handles them in this order): the group must go to n3, the only live node, not
    # to dead n1. Placement re-reads n1's record on the late event: it says lost.
    await cluster.set_node("n2", "lost")
    await expect_decision(rec, bucket, "n3", "n2", 2)


async def test_a_late_node_lost_does_not_move_a_group_off_a_live_node(
    client: Client, services: Services, subjects: Subjects
) -> None:
    cluster, rec, bucket, _ = await start_placement(services, client, subjects)
    first = await expect_decision(rec, bucket, "n1", None, 1)

    record = await get_record(cluster.nodes, "n1", NodeRecord)
    assert record is not None and record.state == "up"
    late = NodeLost(
        source="membership@m2",
        seq=1,
        ts=record.since - timedelta(seconds=10),
        node="n1",
        silent_for=0.3,
    )
    await client.publish(subjects.node_lost("n1"), msgspec.json.encode(late))
    await rec.none_within(of(PlacementDecided), since=rec.after(first), timeout=0.5)
    stored = await get_record(bucket, "web1", Placement)
    assert stored is not None and (stored.node, stored.epoch) == ("n1", 1)
