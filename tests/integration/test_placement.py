"""Placement against a real nats-server: node events and node records in, decisions out.

Membership is simulated: the test writes NodeRecord values into the nodes bucket and publishes
NodeJoined / NodeLost, as membership would.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from schemas.events import NodeJoined, NodeLost, PlacementDecided
from schemas.records import NodeRecord, NodeState, Placement
from services.core.bus import encode, get_record, kv, now
from services.core.clusterconfig import store
from services.core.subjects import Subjects
from services.placement.service import PlacementService

from .conftest import Recorder, Services, group, make_spec, of, record

NODES = ["n1", "n2", "n3"]
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
        stamp = {"source": "membership@test", "seq": self._seq, "ts": now()}
        if state == "up":
            subject, data = self.s.node_joined(node), NodeJoined(**stamp, node=node)
        else:
            subject, data = self.s.node_lost(node), NodeLost(**stamp, node=node, silent_for=0.3)
        await self.client.publish(subject, msgspec.json.encode(data))


async def start_placement(
    services: Services, client: Client, subjects: Subjects, replicas: int = 1
) -> tuple[Cluster, Recorder, KeyValue, list[PlacementService]]:
    """A 3-node spec with web1 (n1, then n2, n3), every node up, ``replicas`` placements."""
    s = subjects
    cli = await services.bus("cli", "test")
    await store(cli, make_spec(NODES, [WEB1]))
    cluster = Cluster(client, s, await kv(cli, s.bucket_nodes))
    for n in NODES:
        await cluster.set_node(n, "up")
    rec = await record(client, s.all_placements)
    placements = []
    for i in range(replicas):
        p = PlacementService(await services.bus("placement", f"p{i + 1}"))
        services.spawn(p.run(), f"placement-p{i + 1}")
        placements.append(p)
    return cluster, rec, await kv(cli, s.bucket_placement), placements


async def expect_decision(
    rec: Recorder, bucket: KeyValue, node: str | None, previous: str | None, epoch: int
) -> PlacementDecided:
    decided: PlacementDecided = await rec.wait(of(PlacementDecided, group="web1", epoch=epoch))
    assert (decided.node, decided.previous) == (node, previous), decided
    stored = await get_record(bucket, "web1", Placement)
    assert stored is not None
    assert (stored.node, stored.epoch) == (node, epoch)
    return decided


@pytest.mark.parametrize("replicas", [1, 2])
async def test_failover_walks_the_sequenced_list_then_halts(
    client: Client, services: Services, subjects: Subjects, replicas: int
) -> None:
    cluster, rec, bucket, placements = await start_placement(services, client, subjects, replicas)

    first = await expect_decision(rec, bucket, "n1", None, 1)
    assert first.reason == "preferred node up"
    await cluster.set_node("n1", "lost")
    second = await expect_decision(rec, bucket, "n2", "n1", 2)
    assert second.reason == "node n1 lost"
    await cluster.set_node("n2", "lost")
    await expect_decision(rec, bucket, "n3", "n2", 3)
    await cluster.set_node("n3", "lost")
    await expect_decision(rec, bucket, None, "n3", 4)

    # The whole cluster came back: the halted group goes home to its preferred node.
    await cluster.set_node("n2", "up")
    await cluster.set_node("n1", "up")
    last = await rec.wait(of(PlacementDecided, group="web1", epoch=5))
    assert last.node in ("n1", "n2")  # whichever join placement saw first
    stored = await get_record(bucket, "web1", Placement)
    assert stored is not None and (stored.node, stored.epoch) == (last.node, 5)

    # Every epoch was decided (and published) exactly once, even with two replicas racing.
    await rec.none_within(of(PlacementDecided), since=rec.after(last), timeout=0.3)
    epochs = Counter(e.epoch for e in rec.matching(of(PlacementDecided)))
    assert epochs == Counter({1: 1, 2: 1, 3: 1, 4: 1, 5: 1})
    assert {e.source for _, e in rec.events} <= {p.bus.source for p in placements}


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
