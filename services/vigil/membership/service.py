"""The membership service's I/O: heartbeats in, lease checks, node events out."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from vigil.wire.events import ConfigApplied, Heartbeat, NodeJoined, NodeLost
from vigil.wire.records import NodeRecord, NodeState

from ..core import tracing
from ..core.bus import Bus, all_records, encode, ensure_stream, kv, now
from ..core.clusterconfig import ConfigSource
from ..core.runner import every
from .leases import Leases, Lost

log = logging.getLogger(__name__)
_HEARTBEAT = msgspec.json.Decoder(Heartbeat)


class Membership:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.config = ConfigSource(bus)
        self.leases: Leases | None = None
        self.nodes: KeyValue | None = None
        self.heartbeats: Subscription | None = None

    async def run(self) -> None:
        await ensure_stream(self.bus)
        self.nodes = await kv(self.bus, self.bus.subjects.bucket_nodes)
        await self.reload()
        self.heartbeats = await self.bus.nc.subscribe(
            self.bus.subjects.all_heartbeats, cb=self.on_heartbeat
        )
        await self.bus.subscribe(self.bus.subjects.config_applied, ConfigApplied, self.on_config)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.check_loop(), name="lease-check")
            tg.create_task(every(3.0, self.reload), name="config-resync")

    async def reload(self) -> None:
        if not await self.config.refresh() or self.config.spec is None or self.nodes is None:
            return
        timing = self.config.spec.cluster.timing
        names = [n.name for n in self.config.spec.nodes]
        if self.leases is None:
            self.leases = Leases(timing.lease)
        # Nodes recorded up that we do not track yet (our first start, or a node put back in the
        # file) get a full lease from now: silent ones are then declared lost, not forgotten.
        records = await all_records(self.nodes, NodeRecord)
        self.leases.assume_up(
            [
                n
                for n, r in records.items()
                if r.state == "up" and n in names and n not in self.leases.last_seen
            ],
            time.monotonic(),
        )
        self.leases.lease = timing.lease
        self.leases.forget(names)
        log.info(
            "config revision %s: %d nodes, lease %gs",
            self.config.revision,
            len(names),
            timing.lease,
        )

    async def on_config(self, _: ConfigApplied) -> None:
        await self.reload()

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = _HEARTBEAT.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.bus.drop(msg.subject, f"malformed heartbeat: {exc}")
            return
        spec = self.config.spec
        if self.leases is None or spec is None:
            return
        if msg.subject != self.bus.subjects.heartbeat(beat.node):
            self.bus.drop(msg.subject, f"heartbeat for {beat.node!r} on the wrong subject")
            return
        if all(n.name != beat.node for n in spec.nodes):
            self.bus.drop(msg.subject, f"heartbeat from unknown node {beat.node!r}")
            return
        if self.leases.heartbeat(beat.node, time.monotonic()) is not None:
            await self.transition(beat.node, "up", NodeJoined(**self.bus.stamp(), node=beat.node))

    async def check_loop(self) -> None:
        while True:
            interval = 0.05
            if self.leases is not None and self.config.spec is not None:
                interval = max(0.01, self.config.spec.cluster.timing.heartbeat / 4)
                if self.leases.overdue(time.monotonic()):
                    await self.drain_heartbeats()
                for lost in self.leases.expire(time.monotonic()):
                    with tracing.span("node lost", node=lost.node):
                        await self.lost(lost)
            await asyncio.sleep(interval)

    async def lost(self, lost: Lost) -> None:
        log.warning("node %s lost: silent for %.3fs", lost.node, lost.silent_for)
        event = NodeLost(**self.bus.stamp(), node=lost.node, silent_for=round(lost.silent_for, 4))
        await self.transition(lost.node, "lost", event)

    async def drain_heartbeats(self) -> None:
        """Before calling a node lost, make sure no heartbeat of it is still queued here: a
        round trip to the server, then let our subscription work through its backlog. A
        membership that was itself stalled must not mistake its own delay for a node's death."""
        if not await self.bus.round_trip(0.5):
            return  # no bus: nothing queued we could read anyway
        for _ in range(100):
            if self.heartbeats is None or self.heartbeats.pending_msgs == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)

    async def transition(self, node: str, state: NodeState, event: NodeJoined | NodeLost) -> None:
        """Record the transition with a compare-and-set, and publish it only if we made it."""
        assert self.nodes is not None
        record = NodeRecord(name=node, state=state, since=now())
        try:
            entry = await self.nodes.get(node)
        except Exception:
            entry = None
        try:
            if entry is None or not entry.value:
                await self.nodes.create(node, encode(record))
            else:
                try:
                    if msgspec.json.decode(entry.value, type=NodeRecord).state == state:
                        return  # another replica already recorded it
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("node %s: unreadable record; rewriting it", node)
                await self.nodes.update(node, encode(record), last=entry.revision)
        except Exception as exc:
            log.info("node %s -> %s recorded by another replica (%s)", node, state, exc)
            return
        subject = (
            self.bus.subjects.node_joined(node)
            if state == "up"
            else self.bus.subjects.node_lost(node)
        )
        await self.bus.publish(subject, event)
