"""The membership service's I/O: heartbeats in, leases granted, node events out.

A heartbeat is a request; the reply (``LeaseGranted``) is what extends the node's fence, and
it is sent only after the grant is stored with a compare-and-set on the node's record. A loss
is declared with a compare-and-set on the same record, so grants and declarations are ordered
by the bucket, whichever replica makes them (docs/safety.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vigil.wire.events import ConfigApplied, Heartbeat, LeaseGranted, NodeJoined, NodeLost
from vigil.wire.records import NodeRecord

from ..core import tracing
from ..core.bus import Bus, encode, ensure_stream, kv, now, replayed
from ..core.clusterconfig import ConfigSource
from ..core.kvcache import KVCache
from ..core.lease import fence_ttl
from ..core.runner import every
from . import leases

log = logging.getLogger(__name__)
_HEARTBEAT = msgspec.json.Decoder(Heartbeat)
# A node beats a few times a second: more queued than this is a flood, dropped (and counted)
# by the client. Heartbeats are a few hundred bytes; the byte bound lets one max_payload in.
HEARTBEATS_PENDING_MSGS = 64
HEARTBEATS_PENDING_BYTES = 2 * 1024 * 1024


class Membership:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.config = ConfigSource(bus)
        self.nodes: KeyValue | None = None
        self.records: KVCache[NodeRecord] | None = None
        # One subscription per node of the cluster file, each with its own small queue: a node
        # flooding its own heartbeat subject fills (and overflows) only its own, and every
        # other node's heartbeats are read by their own task, not behind the flood.
        self.heartbeats: dict[str, Subscription] = {}
        # No node is declared lost before this (monotonic): a full lease from our start, and
        # from every reconnection, for its heartbeats to reach us (a bus outage is not the
        # death of every node).
        self.grace_until = float("inf")
        self.cut_off = False
        # The nodes bucket stopped answering (its stream electing a leader after a server
        # died): grants fail then, so a node's silence is ours, not its. Once the bucket answers
        # again every node gets a full lease, as after a reconnection; meanwhile none is
        # declared lost. Safe: without a grant no fence is extended, the addresses go dark.
        self.bucket_down = False
        self.failures = 0  # grants that failed in a row, for rate-limited logging
        self.tg: asyncio.TaskGroup | None = None
        self.granting: set[str] = set()  # nodes whose grant is being stored

    def timing(self) -> tuple[float, float]:
        spec = self.config.spec
        assert spec is not None
        return spec.cluster.timing.heartbeat, spec.cluster.timing.lease

    async def run(self) -> None:
        await ensure_stream(self.bus)
        self.nodes = await kv(self.bus, self.bus.subjects.bucket_nodes)
        self.records = KVCache(self.nodes, NodeRecord, connection=self.bus.nc)
        await self.reload()
        await self.bus.subscribe(self.bus.subjects.config_applied, ConfigApplied, self.on_config)
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            tg.create_task(self.records.run(), name="watch-nodes")
            tg.create_task(self.check_loop(), name="lease-check")
            tg.create_task(every(3.0, self.reload), name="config-resync")

    async def reload(self) -> None:
        if not await self.config.refresh() or self.config.spec is None:
            return
        _, lease = self.timing()
        if self.grace_until == float("inf"):
            self.grace_until = time.monotonic() + lease
        await self.listen({n.name for n in self.config.spec.nodes})
        log.info(
            "config revision %s: %d nodes, lease %gs",
            self.config.revision,
            len(self.config.spec.nodes),
            lease,
        )

    async def on_config(self, _: ConfigApplied) -> None:
        await self.reload()

    # -- grants --------------------------------------------------------------------------------
    async def listen(self, nodes: set[str]) -> None:
        """Subscribe to the heartbeats of exactly ``nodes`` (a node not in the cluster file is
        not listened to: its heartbeats are never read)."""
        for node in sorted(self.heartbeats.keys() - nodes):
            await self.heartbeats.pop(node).unsubscribe()
        for node in sorted(nodes - self.heartbeats.keys()):
            self.heartbeats[node] = await self.bus.nc.subscribe(
                self.bus.subjects.heartbeat(node),
                cb=self.on_heartbeat,
                pending_msgs_limit=HEARTBEATS_PENDING_MSGS,
                pending_bytes_limit=HEARTBEATS_PENDING_BYTES,
            )

    async def on_heartbeat(self, msg: Msg) -> None:
        if replayed(msg):  # a consumer aimed at the heartbeat subject: no one's heartbeat
            self.bus.drop(msg.subject, "replayed by a JetStream consumer, not published")
            return
        try:
            beat = _HEARTBEAT.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.bus.drop(msg.subject, f"malformed heartbeat: {exc}")
            return
        spec = self.config.spec
        if spec is None or self.records is None or not self.records.ready.is_set():
            return  # no answer: the node keeps the lease it has, and asks again
        if msg.subject != self.bus.subjects.heartbeat(beat.node):
            self.bus.drop(msg.subject, f"heartbeat for {beat.node!r} on the wrong subject")
            return
        if all(n.name != beat.node for n in spec.nodes):
            self.bus.drop(msg.subject, f"heartbeat from unknown node {beat.node!r}")
            return
        # Nodes are granted concurrently (their writes pipelined on the connection), one grant
        # per node at a time: a heartbeat that finds its node's previous grant still being
        # stored goes unanswered, and the next one renews the lease.
        if self.tg is None or beat.node in self.granting:
            return
        self.granting.add(beat.node)
        self.tg.create_task(self.answer(beat.node, msg), name=f"grant-{beat.node}")

    async def answer(self, node: str, msg: Msg) -> None:
        """Owned by the service's task group: never lets an error out (it would stop them all)."""
        try:
            await self._answer(node, msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("could not answer %s's heartbeat: %s", node, exc)
        finally:
            self.granting.discard(node)

    async def _answer(self, node: str, msg: Msg) -> None:
        try:
            granted = await self.grant(node)
        except Exception as exc:  # the bus is failing: no grant, the node's fence runs down
            self.bucket_down = True
            self.failures += 1
            level = logging.WARNING if self.failures & (self.failures - 1) == 0 else logging.DEBUG
            log.log(level, "no lease for %s (failure %d): %s", node, self.failures, exc)
            return
        self.failures = 0
        self.bucket_back()
        if granted is not None and msg.reply:
            heartbeat, lease = self.timing()
            reply = LeaseGranted(
                **self.bus.stamp(),
                node=node,
                incarnation=granted.incarnation,
                ttl=fence_ttl(heartbeat, lease),
            )
            await msg.respond(encode(reply))

    async def grant(self, node: str) -> NodeRecord | None:
        """Store a grant for ``node`` (compare-and-set), and return the record that holds it."""
        assert self.nodes is not None and self.records is not None
        heartbeat, lease = self.timing()
        for _ in range(3):
            before = self.records.get(node)
            unreadable = self.records.unreadable.get(node)
            at = now()
            after = leases.grant(before, node, at, fence_ttl(heartbeat, lease))
            floor = at + timedelta(seconds=fence_ttl(heartbeat, lease) - heartbeat)
            try:
                if before is None and unreadable is None:
                    revision = await self.nodes.create(node, encode(after))
                else:
                    if before is None:
                        log.warning("node %s: unreadable record; rewriting it", node)
                    last = self.records.revision(node) if before else unreadable
                    revision = await self.nodes.update(node, encode(after), last=last)
            except KeyWrongLastSequenceError:
                fresh = await self.records.reread(node)
                if (
                    fresh is not None
                    and before is not None
                    and fresh.state == "up"
                    and fresh.incarnation == before.incarnation
                    and fresh.granted_until is not None
                    and fresh.granted_until >= floor
                ):
                    return fresh  # another replica granted this very heartbeat
                continue
            self.records.note(node, revision, after)
            if leases.joined(before, after):
                log.info("node %s joined (incarnation %d)", node, after.incarnation)
                await self.bus.publish(
                    self.bus.subjects.node_joined(node), NodeJoined(**self.bus.stamp(), node=node)
                )
            return after
        return None

    # -- losses --------------------------------------------------------------------------------
    def bucket_back(self) -> None:
        if self.bucket_down and self.config.spec is not None:
            self.bucket_down = False
            self.grace_until = time.monotonic() + self.timing()[1]
            log.warning("the nodes bucket answers again: every node gets a full lease from now")

    async def bucket_answers(self) -> bool:
        """Does the nodes bucket answer (its stream has a leader)?"""
        assert self.nodes is not None
        try:
            await self.nodes.status()
        except Exception:
            return False
        self.bucket_back()
        return True

    async def check_loop(self) -> None:
        while True:
            interval = 0.05
            if self.config.spec is not None and self.records is not None:
                heartbeat, lease = self.timing()
                interval = max(0.01, heartbeat / 4)
                connected = self.bus.nc.is_connected
                if not connected:
                    self.cut_off = True
                elif self.cut_off:
                    self.cut_off = False
                    self.grace_until = time.monotonic() + lease
                    log.warning("back on the bus: every node gets a full lease from now")
                if connected and self.bucket_down and not await self.bucket_answers():
                    await asyncio.sleep(interval)
                    continue
                if connected and time.monotonic() >= self.grace_until:
                    try:
                        await self.expire(heartbeat, lease)
                    except Exception as exc:  # the bus failing mid-check: the next one retries
                        log.info("lease check failed (%s); checking again", exc)
            await asyncio.sleep(interval)

    async def expire(self, heartbeat: float, lease: float) -> None:
        assert self.records is not None and self.config.spec is not None
        fence = fence_ttl(heartbeat, lease)
        names = {n.name for n in self.config.spec.nodes}
        due = [
            n
            for n, r in sorted(self.records.values().items())
            if n in names and leases.expired(r, now(), lease, fence)
        ]
        if due:
            await self.drain_heartbeats()
        for node in due:
            record = self.records.get(node)
            if record is not None and leases.expired(record, now(), lease, fence):
                with tracing.span("node lost", node=node):
                    await self.declare_lost(node, record, leases.silent_for(record, now(), fence))

    async def declare_lost(self, node: str, record: NodeRecord, silent: float) -> None:
        assert self.nodes is not None and self.records is not None
        lost = leases.declare_lost(record, now())
        try:
            revision = await self.nodes.update(node, encode(lost), last=self.records.revision(node))
        except KeyWrongLastSequenceError:
            # Not someone else's success unless the record says so: a grant, or another
            # replica's declaration, or our copy was stale. Re-read; the next check decides
            # again on the fresh record (and declares the loss if it still holds).
            with contextlib.suppress(Exception):  # no answer: the next check re-reads again
                fresh = await self.records.reread(node)
                log.info("node %s: record changed under us, now %s", node, fresh)
            return
        except Exception as exc:
            self.bucket_down = True  # the bucket is not answering: a full lease once it does
            log.info("could not declare %s lost (%s); will retry", node, exc)
            return
        self.records.note(node, revision, lost)
        log.warning("node %s lost: silent for %.3fs", node, silent)
        event = NodeLost(**self.bus.stamp(), node=node, silent_for=round(silent, 4))
        await self.bus.publish(self.bus.subjects.node_lost(node), event)

    async def drain_heartbeats(self) -> None:
        """Before calling a node lost, make sure no heartbeat of it is still queued here: a
        round trip to the server, then let our subscription work through its backlog. A
        membership that was itself stalled must not mistake its own delay for a node's death."""
        if not await self.bus.round_trip(0.5):
            return  # no bus: nothing queued we could read anyway
        for _ in range(100):
            if all(sub.pending_msgs == 0 for sub in self.heartbeats.values()):
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
