"""Membership against a real nats-server: heartbeats in, leases, NodeJoined / NodeLost out."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from vigil.core.bus import get_record, kv
from vigil.core.clusterconfig import store
from vigil.core.subjects import Subjects
from vigil.membership.service import Membership
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import NodeJoined, NodeLost
from vigil.wire.records import NodeRecord

from .conftest import DEADLINE, Hearts, Services, make_spec, of, record

LEASE = 1.0  # the specs below: heartbeat 50ms, lease 1s
# Long enough that a stall of the one event loop running every replica and every fake node (a
# loaded CI machine) does not read as a node's death; the tests' waits scale with it.


def timed_spec(nodes: list[str], groups: list[dict[str, Any]] | None = None) -> ClusterSpec:
    return make_spec(nodes, groups, heartbeat="50ms", lease="1s")


class ProbedMembership(Membership):
    """Membership with a probe: ``heard`` is set once it has handled a heartbeat with a lease
    table, i.e. it has read the cluster file and is listening."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.heard = asyncio.Event()
        self._reloaded = asyncio.Event()

    async def reload(self) -> None:
        await super().reload()
        self._reloaded.set()

    async def applied(self, revision: int) -> None:
        """Return once this replica has loaded config ``revision`` (or a later one)."""
        async with asyncio.timeout(DEADLINE):
            while self.config.revision < revision:
                self._reloaded.clear()
                await self._reloaded.wait()

    async def on_heartbeat(self, msg: Msg) -> None:
        await super().on_heartbeat(msg)
        if (
            self.config.spec is not None
            and self.records is not None
            and self.records.ready.is_set()
        ):
            self.heard.set()


async def start_membership(
    services: Services, client: Client, subjects: Subjects, replicas: int = 1
) -> tuple[list[ProbedMembership], Hearts]:
    """Store a spec with n1, n2; start ``replicas`` membership services and heartbeating agents
    for n1 and n2; return once every replica is listening."""
    cli = await services.bus("cli", "test")
    await store(cli, timed_spec(["n1", "n2"]))
    replicas_ = []
    for i in range(replicas):
        m = ProbedMembership(await services.bus("membership", f"m{i + 1}"))
        services.spawn(m.run(), f"membership-m{i + 1}")
        replicas_.append(m)
    hearts = Hearts(client, subjects)
    hearts.beating = {"n1", "n2"}
    services.spawn(hearts.run(), "hearts")
    for m in replicas_:
        await asyncio.wait_for(m.heard.wait(), DEADLINE)
    return replicas_, hearts


async def test_nodes_join_then_a_silent_node_is_lost_once_and_rejoins(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    rec = await record(client, s.all_node_events)
    (m,), hearts = await start_membership(services, client, s)
    nodes = await kv(m.bus, s.bucket_nodes)

    await rec.expect(of(NodeJoined, s.node_joined("n1"), node="n1"))
    await rec.expect(of(NodeJoined, s.node_joined("n2"), node="n2"))

    mark = rec.mark()
    hearts.beating.discard("n1")
    lost = await rec.expect(of(NodeLost, s.node_lost("n1"), node="n1"), since=mark)
    assert lost.silent_for >= LEASE
    assert lost.source == m.bus.source
    n1 = await get_record(nodes, "n1", NodeRecord)
    assert n1 is not None and n1.state == "lost"
    n2 = await get_record(nodes, "n2", NodeRecord)
    assert n2 is not None and n2.state == "up"

    rejoin = rec.mark()
    hearts.beating.add("n1")
    await rec.expect(of(NodeJoined, s.node_joined("n1"), node="n1"), since=rejoin)
    n1 = await get_record(nodes, "n1", NodeRecord)
    assert n1 is not None and n1.state == "up"

    # One publisher, so its messages arrive in order: anything published before the rejoin
    # (a duplicate loss, a loss of n2) is already in the recorder.
    assert len(rec.matching(of(NodeLost, node="n1"))) == 1
    assert rec.matching(of(NodeLost, node="n2")) == []
    assert len(rec.matching(of(NodeJoined, node="n2"))) == 1
    assert [type(e).__name__ for e in rec.events if getattr(e, "node", None) == "n1"] == [
        "NodeJoined",
        "NodeLost",
        "NodeJoined",
    ]


async def test_two_replicas_publish_each_transition_once(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    rec = await record(client, s.all_node_events)
    replicas, hearts = await start_membership(services, client, s, replicas=2)

    await rec.expect(of(NodeJoined, node="n1"))
    await rec.expect(of(NodeJoined, node="n2"))

    mark = rec.mark()
    hearts.beating.discard("n1")
    lost = await rec.expect(of(NodeLost, s.node_lost("n1"), node="n1"), since=mark)
    assert lost.silent_for >= LEASE
    # No second NodeLost comes, though both replicas saw the lease lapse (and so both tried
    # to record it: the later one lost the compare-and-set or found it recorded).
    await rec.none_within(of(NodeLost, node="n1"), since=rec.after(lost), timeout=2 * LEASE)
    for m in replicas:
        assert m.records is not None
        n1 = await m.records.reread("n1")
        assert n1 is not None and n1.state == "lost"

    rejoin = rec.mark()
    hearts.beating.add("n1")
    joined = await rec.expect(of(NodeJoined, node="n1"), since=rejoin)
    await rec.none_within(of(NodeJoined, node="n1"), since=rec.after(joined), timeout=2 * LEASE)

    assert len(rec.matching(of(NodeLost, node="n1"))) == 1
    assert len(rec.matching(of(NodeJoined, node="n1"))) == 2  # first join, rejoin
    assert len(rec.matching(of(NodeJoined, node="n2"))) == 1
    assert rec.matching(of(NodeLost, node="n2")) == []
    assert {e.source for e in rec.events} <= {m.bus.source for m in replicas}


async def test_a_node_is_lost_though_both_replicas_first_declare_it_on_a_stale_revision(
    client: Client, services: Services, subjects: Subjects
) -> None:
    """Both replicas' compare-and-set of the lost node's record is refused ('wrong last
    sequence': their copy was stale, as with the nodes bucket's leader dead). Neither may take
    the refusal for the other's success: each re-reads, decides again, and n1 is lost."""
    s = subjects
    rec = await record(client, s.all_node_events)
    replicas, hearts = await start_membership(services, client, s, replicas=2)
    await rec.expect(of(NodeJoined, node="n1"))
    refused: list[str] = []
    for m in replicas:
        assert m.nodes is not None
        update = m.nodes.update

        def stale_once(m: ProbedMembership, update: Any) -> Any:
            async def first_on_a_stale_revision(key: str, value: bytes, last: int) -> int:
                record_ = msgspec.json.decode(value, type=NodeRecord)
                # refused until both replicas have been: each fails before either succeeds
                if key == "n1" and record_.state == "lost" and len(set(refused)) < 2:
                    refused.append(m.bus.source)
                    last -= 1  # the server refuses it, as it refuses a stale copy's revision
                return int(await update(key, value, last=last))

            return first_on_a_stale_revision

        m.nodes.update = stale_once(m, update)  # type: ignore[method-assign]

    mark = rec.mark()
    hearts.beating.discard("n1")
    lost = await rec.expect(of(NodeLost, s.node_lost("n1"), node="n1"), since=mark)
    assert set(refused) == {m.bus.source for m in replicas}, refused
    await rec.none_within(of(NodeLost, node="n1"), since=rec.after(lost), timeout=2 * LEASE)
    stored = await get_record(await kv(replicas[0].bus, s.bucket_nodes), "n1", NodeRecord)
    assert stored is not None and stored.state == "lost", stored


async def test_a_node_dropped_from_the_file_and_readded_while_dead_is_lost(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    rec = await record(client, s.all_node_events)
    (m,), hearts = await start_membership(services, client, s)
    await rec.expect(of(NodeJoined, node="n1"))
    await rec.expect(of(NodeJoined, node="n2"))
    cli = await services.bus("cli", "test2")

    await m.applied(await store(cli, timed_spec(["n1"])))  # n2 leaves the cluster file ...
    hearts.beating.discard("n2")  # ... and is switched off
    await m.applied(await store(cli, timed_spec(["n1", "n2"])))  # later it is listed again

    # Its record still says "up" (placement and `vigil status` believe it), so membership
    # must give it a lease and declare it lost when that lapses.
    n2 = await get_record(await kv(cli, s.bucket_nodes), "n2", NodeRecord)
    assert n2 is not None and n2.state == "up"
    await rec.expect(of(NodeLost, node="n2"), timeout=4 * LEASE)


async def test_a_restarted_replica_gives_recorded_nodes_a_lease_and_loses_the_silent_one(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    rec = await record(client, s.all_node_events)
    (m1,), hearts = await start_membership(services, client, s)
    await rec.expect(of(NodeJoined, node="n1"))
    await rec.expect(of(NodeJoined, node="n2"))

    # The only replica goes away; while it is gone, n1 dies.
    task = next(t for t in services.tasks if t.get_name() == "membership-m1")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await m1.bus.close()
    hearts.beating.discard("n1")

    # A new replica starts from the nodes bucket (both recorded up) and loses n1 after a lease.
    mark = rec.mark()
    m2 = ProbedMembership(await services.bus("membership", "m2"))
    services.spawn(m2.run(), "membership-m2")
    lost = await rec.expect(of(NodeLost, node="n1"), since=mark)
    assert lost.source == m2.bus.source and lost.silent_for >= LEASE
    # n2, which kept beating, is neither lost nor announced again.
    await rec.none_within(of(NodeJoined), since=mark, timeout=2 * LEASE)
    assert rec.matching(of(NodeLost, node="n2")) == []
