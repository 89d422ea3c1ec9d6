"""Leases granted by membership (issue 10, item 4): a heartbeat is a request, membership's
answer is the lease, grants and loss declarations go through the node's record."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from vigil.core import embedded
from vigil.core.bus import Bus, get_record, kv
from vigil.core.clusterconfig import store
from vigil.core.subjects import Subjects
from vigil.wire.events import LeaseGranted, NodeJoined, NodeLost
from vigil.wire.records import LeaseRecord, NodeRecord

from .conftest import DEADLINE, Hearts, Services, of, record
from .test_membership import LEASE, ProbedMembership, start_membership, timed_spec

_GRANT = msgspec.json.Decoder(LeaseGranted)


async def ask(nc: Client, hearts: Hearts, node: str) -> LeaseGranted:
    reply = await nc.request(hearts.subjects.heartbeat(node), hearts.beat(node), timeout=1.0)
    return _GRANT.decode(reply.data)


async def test_the_lease_is_membership_s_answer_and_a_lost_node_comes_back_anew(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    rec = await record(client, s.all_node_events)
    replicas, hearts = await start_membership(services, client, s, replicas=2)
    await rec.expect(of(NodeJoined, node="n1"))
    asked = time.monotonic()
    grant = await ask(client, hearts, "n1")
    took = time.monotonic() - asked
    assert grant.node == "n1" and grant.incarnation == 1
    # the fence lasts until the stored grant ends: F from when it was stored (or, when another
    # replica stored a grant for this heartbeat, from a heartbeat earlier), less the time it
    # took to answer; never more than F
    fence = LEASE - 2 * 0.05
    assert fence - 0.05 - took <= grant.ttl <= fence
    stored = await get_record(await kv(replicas[0].bus, s.bucket_nodes), "n1", NodeRecord)
    assert stored is not None and stored.granted_until is not None and stored.incarnation == 1

    mark = rec.mark()
    hearts.beating.discard("n1")
    await rec.expect(of(NodeLost, node="n1"), since=mark)
    # Back after it was declared lost: granted only as a new incarnation (its address service
    # lets go of everything it held before it takes that lease).
    again = await ask(client, hearts, "n1")
    assert again.incarnation == 2
    await rec.expect(of(NodeJoined, node="n1"), since=mark)
    assert len(rec.matching(of(NodeLost, node="n1"))) == 1


async def test_no_answer_for_an_unknown_node(
    client: Client, services: Services, subjects: Subjects
) -> None:
    _, hearts = await start_membership(services, client, subjects)
    # Membership listens only to the nodes of the cluster file: no one answers (a flood on an
    # unknown node's subject is not even read).
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await ask(client, hearts, "intruder")


async def test_after_a_nats_restart_every_node_is_learned_again_and_none_declared_lost(
    tmp_path: Path, subjects: Subjects
) -> None:
    s = subjects
    port = embedded.free_port()
    proc, url = embedded.start(tmp_path, port=port)
    procs = [proc]
    tasks: list[asyncio.Task[None]] = []
    buses: list[Bus] = []
    try:
        cli = await Bus.connect([url], s, "cli", name="test")
        buses.append(cli)
        await store(cli, timed_spec(["n1", "n2"]))
        watcher = await nats.connect(url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        rec = await record(watcher, s.all_node_events)
        m = ProbedMembership(await Bus.connect([url], s, "membership", name="m1"))
        buses.append(m.bus)
        tasks.append(asyncio.create_task(m.run()))
        hearts = Hearts(watcher, s)
        hearts.beating = {"n1", "n2"}
        tasks.append(asyncio.create_task(hearts.run()))
        await rec.expect(of(NodeJoined, node="n1"))
        await rec.expect(of(NodeJoined, node="n2"))

        proc.terminate()
        proc.wait(timeout=10)
        await asyncio.sleep(3 * LEASE)  # the outage itself: longer than a lease
        proc, _ = embedded.start(tmp_path, port=port)
        procs.append(proc)
        mark = rec.mark()
        # Everyone reconnects; heartbeats flow again. Membership, cut off itself, gives each
        # node a full lease from its reconnection: nobody is declared lost.
        await rec.none_within(of(NodeLost), since=mark, timeout=4 * LEASE)
        async with asyncio.timeout(DEADLINE):
            nodes = await kv(m.bus, s.bucket_nodes)
            for n in ("n1", "n2"):
                r = await get_record(nodes, n, NodeRecord)
                assert r is not None and r.state == "up", r
        # ... and a node that stays silent after the restart is still lost.
        hearts.beating.discard("n2")
        await rec.expect(of(NodeLost, node="n2"), since=mark, timeout=DEADLINE)
        await watcher.close()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bus in buses:
            await bus.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


@pytest.mark.parametrize("hang", [0.0, 1.0], ids=["refused", "timing-out"])
async def test_no_loss_is_begun_while_the_nodes_bucket_does_not_answer(
    client: Client, services: Services, subjects: Subjects, hang: float
) -> None:
    """Chaos seed 71: n2 froze while the nodes bucket elected a leader. Its loss was begun (its
    incarnation revoked in ``leases``) and could not be finished (``nodes`` did not answer);
    thawed, n2 could be granted by neither bucket until the election was over. Now no loss is
    begun while ``nodes`` fails: a node back within that time is granted by ``leases``."""
    s = subjects
    rec = await record(client, s.all_node_events)
    (m,), hearts = await start_membership(services, client, s)
    await rec.expect(of(NodeJoined, node="n1"))
    await rec.expect(of(NodeJoined, node="n2"))
    assert m.nodes is not None
    update, electing = m.nodes.update, True

    async def unanswered(key: str, value: bytes, last: int | None = None) -> int:
        if electing:  # as a stream with no leader answers: not at all, at once or after a wait
            await asyncio.sleep(hang)
            raise nats.errors.TimeoutError
        return int(await update(key, value, last=last))

    m.nodes.update = unanswered  # type: ignore[method-assign]
    leases_bucket = await kv(m.bus, s.bucket_leases)
    mark = rec.mark()
    hearts.beating.discard("n1")
    await asyncio.sleep(3 * LEASE)  # silent for three leases: the length is the point
    held = await get_record(leases_bucket, "n1", LeaseRecord)
    assert held is not None and not held.revoked, held
    hearts.beating.add("n1")
    grant = await ask(client, hearts, "n1")  # back: granted by leases alone
    assert grant.incarnation == 1
    electing = False
    await rec.none_within(of(NodeLost), since=mark, timeout=2 * LEASE)
