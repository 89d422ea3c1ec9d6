"""Bad input on the bus is counted in ``bus.dropped`` and dropped; the service keeps working.

NATS delivers one connection's messages to a subscription in order, and a subscription's
callbacks run one at a time; so once the event caused by a *following* valid message arrives,
the bad ones before it have been handled (and counted).
"""

from __future__ import annotations

import msgspec
from nats.aio.client import Client

from vigil.core.bus import now
from vigil.core.subjects import Subjects
from vigil.wire.events import Heartbeat, NodeJoined, NodeLost, PlacementDecided

from .conftest import Hearts, Services, of, record
from .test_membership import start_membership
from .test_placement import start_placement


async def test_membership_drops_bad_heartbeats_and_keeps_working(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    rec = await record(client, s.all_node_events)
    (m,), hearts = await start_membership(services, client, s)
    await rec.expect(of(NodeJoined, node="n1"))
    await rec.expect(of(NodeJoined, node="n2"))
    hearts.beating.discard("n1")
    await rec.expect(of(NodeLost, node="n1"))
    assert m.bus.dropped == {}

    rejoin = rec.mark()
    stray = Hearts(client, s)
    await client.publish(s.heartbeat("n1"), b"not json")
    other = {"type": "node_joined", "source": "x@y", "seq": 1, "ts": now(), "node": "n1"}
    await client.publish(s.heartbeat("n1"), msgspec.json.encode(other))  # not a heartbeat
    await stray.send("n9")  # a node that is not in the cluster file: not even listened to
    await stray.send("n1", subject=s.heartbeat("n2"))  # n1's heartbeat on n2's subject
    await stray.send("n1")  # and a good one: n1 is back
    await rec.expect(of(NodeJoined, s.node_joined("n1"), node="n1"), since=rejoin)

    # Each node's heartbeats have a subscription (and an order) of their own: n2's queue may
    # not be through yet. Membership's own drain waits for every queue to be read.
    await m.drain_heartbeats()
    assert m.bus.dropped == {s.heartbeat("n1"): 2, s.heartbeat("n2"): 1}
    assert rec.matching(of(NodeJoined, node="n9")) == []
    assert rec.matching(of(NodeLost, node="n2")) == []  # n2's own heartbeats still count


async def test_placement_drops_garbage_node_events_and_keeps_working(
    client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    cluster, rec, _, (p,) = await start_placement(services, client, s)
    await rec.expect(of(PlacementDecided, group="web1", node="n1", epoch=1))

    garbage = s.node_lost("x")
    await client.publish(garbage, b"\x00garbage{")
    beat = Heartbeat(source="agent@x", seq=1, ts=now(), node="x")
    await client.publish(garbage, msgspec.json.encode(beat))  # valid JSON, wrong event type
    await client.publish(s.node_joined("x"), b"{}")  # no type tag at all
    # The following valid loss (recorded, then announced, as membership does) moves the group.
    await cluster.set_node("n1", "lost")
    decided = await rec.expect(of(PlacementDecided, group="web1", epoch=2))
    assert (decided.node, decided.previous) == ("n2", "n1")

    assert p.bus.dropped == {garbage: 2, s.node_joined("x"): 1}
