"""The membership service's I/O: heartbeats in, leases granted, node events out.

A heartbeat is a request; the reply (``LeaseGranted``) is what extends the node's fence, and
it is sent only after the grant is stored with a compare-and-set on the node's record, in the
``nodes`` bucket or the ``leases`` bucket, whichever stores it first: one bucket's leader
election (a NATS server died) does not let the fences lapse. A loss is declared by revoking
the node's incarnation in ``leases`` and then marking it lost in ``nodes``, each with a
compare-and-set, so grants and declarations are ordered by the buckets, whichever replica
makes them (docs/safety.md, "Two lease buckets").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import datetime, timedelta

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vigil.wire.events import ConfigApplied, Heartbeat, LeaseGranted, NodeJoined, NodeLost
from vigil.wire.records import LeaseRecord, NodeRecord

from ..core import tracing
from ..core.bus import Bus, compare_and_set, encode, ensure_stream, kv, now, replayed
from ..core.clusterconfig import ConfigSource
from ..core.kvcache import KVCache
from ..core.lease import fence_ttl
from ..core.runner import every, stop_if_cancelled
from . import leases

log = logging.getLogger(__name__)
_HEARTBEAT = msgspec.json.Decoder(Heartbeat)
# A node beats a few times a second: more queued than this is a flood, dropped (and counted)
# by the client. Heartbeats are a few hundred bytes; the byte bound lets one max_payload in.
HEARTBEATS_PENDING_MSGS = 64
HEARTBEATS_PENDING_BYTES = 2 * 1024 * 1024
# Seconds between checks that the two lease buckets' leaders are on different servers (with a
# random part, so that two replicas rarely move the leader at once).
LEADERS_CHECK = 2.0
NODES, LEASES = "nodes", "leases"


class Membership:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.config = ConfigSource(bus)
        self.nodes: KeyValue | None = None
        self.records: KVCache[NodeRecord] | None = None
        self.leases: KeyValue | None = None
        self.lease_records: KVCache[LeaseRecord] | None = None
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
        # When (monotonic) a write in ``nodes`` last failed other than by compare-and-set (its
        # stream electing a leader), None once one succeeded since. A loss is not begun
        # meanwhile: its second write, in ``nodes``, would fail, and its first, the revocation
        # in ``leases``, would leave the node grantable by neither bucket (chaos seed 71: a node
        # thawed during the election kept no lease until it was over).
        self.nodes_failed: tuple[float, float] | None = None  # (that write began, it failed)
        self.nodes_writing: dict[str, float] = {}  # node -> when its grant in ``nodes`` began
        self.tg: asyncio.TaskGroup | None = None
        self.granting: set[tuple[str, str]] = set()  # (node, bucket): a grant being stored

    def timing(self) -> tuple[float, float]:
        spec = self.config.spec
        assert spec is not None
        return spec.cluster.timing.heartbeat, spec.cluster.timing.lease

    async def run(self) -> None:
        await ensure_stream(self.bus)
        self.nodes = await kv(self.bus, self.bus.subjects.bucket_nodes)
        self.records = KVCache(self.nodes, NodeRecord, connection=self.bus.nc)
        self.leases = await kv(self.bus, self.bus.subjects.bucket_leases)
        self.lease_records = KVCache(self.leases, LeaseRecord, connection=self.bus.nc)
        await self.reload()
        await self.bus.subscribe(self.bus.subjects.config_applied, ConfigApplied, self.on_config)
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            tg.create_task(self.records.run(), name="watch-nodes")
            tg.create_task(self.lease_records.run(), name="watch-leases")
            tg.create_task(self.keep_leaders_apart(), name="leaders-apart")
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
        if self.lease_records is None or not self.lease_records.ready.is_set():
            return
        if msg.subject != self.bus.subjects.heartbeat(beat.node):
            self.bus.drop(msg.subject, f"heartbeat for {beat.node!r} on the wrong subject")
            return
        if all(n.name != beat.node for n in spec.nodes):
            self.bus.drop(msg.subject, f"heartbeat from unknown node {beat.node!r}")
            return
        # Nodes are granted concurrently (their writes pipelined on the connection), in both
        # buckets at once, one grant per node and bucket at a time: a bucket still storing the
        # node's previous grant (electing a leader, its request waiting out its timeout) is
        # skipped, and the other one answers.
        if self.tg is None:
            return
        kinds = [k for k in (NODES, LEASES) if (beat.node, k) not in self.granting]
        if not kinds:
            return
        self.granting.update((beat.node, k) for k in kinds)
        self.tg.create_task(self.answer(beat.node, msg, kinds), name=f"grant-{beat.node}")

    async def answer(self, node: str, msg: Msg, kinds: list[str]) -> None:
        """Owned by the service's task group: never lets an error out (it would stop them all).
        Answers with the first grant stored; the other bucket's write goes on without us."""
        assert self.tg is not None
        try:
            pending = {self.tg.create_task(self.grant_in(k, node)) for k in kinds}
            granted: tuple[int, datetime] | None = None
            errors: list[BaseException] = []
            while pending and granted is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    stored, error = task.result()
                    if error is not None:
                        errors.append(error)
                    elif stored is not None and granted is None:
                        granted = stored
            if granted is None:
                if errors:  # a bucket failed and none granted: the node's fence runs down
                    self.bucket_down = True
                    self.failures += 1
                    n = self.failures
                    level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG
                    log.log(level, "no lease for %s (failure %d): %s", node, n, errors[0])
                return
            self.failures = 0
            self.bucket_back()
            # The fence may last until the grant stored ends, never longer: the node counts it
            # from when its heartbeat left, before now. (A grant another replica stored for
            # this heartbeat ends up to a heartbeat earlier than one we would have stored.)
            heartbeat, lease = self.timing()
            incarnation, until = granted
            ttl = min(fence_ttl(heartbeat, lease), (until - now()).total_seconds())
            if msg.reply and ttl > 0:
                reply = LeaseGranted(
                    **self.bus.stamp(), node=node, incarnation=incarnation, ttl=ttl
                )
                await msg.respond(encode(reply))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("could not answer %s's heartbeat: %s", node, exc)

    async def grant_in(
        self, kind: str, node: str
    ) -> tuple[tuple[int, datetime] | None, BaseException | None]:
        """Store a grant for ``node`` in one bucket: the incarnation granted and the end of the
        grant stored (None: this bucket may not grant it), or the error. Runs in the task group:
        never raises."""
        began = time.monotonic()
        try:
            if kind == LEASES:
                held = await self.grant_lease(node)
                return ((held.incarnation, held.granted_until) if held else None), None
            self.nodes_writing[node] = began
            record = await self.grant(node)
            self.nodes_answered(began)
            if record is None or record.granted_until is None:
                return None, None
            return (record.incarnation, record.granted_until), None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if kind == NODES:
                self.nodes_failing(began)
            return None, exc
        finally:
            self.granting.discard((node, kind))
            if kind == NODES:
                self.nodes_writing.pop(node, None)

    async def grant(self, node: str) -> NodeRecord | None:
        """Store a grant for ``node`` (compare-and-set), and return the record that holds it."""
        assert self.nodes is not None and self.records is not None
        assert self.lease_records is not None
        heartbeat, lease = self.timing()
        for _ in range(3):
            before = self.records.get(node)
            # the lease record, read before the grant is stored: see adopt
            seen = self.lease_records.get(node), self.lease_records.last(node)
            at = now()
            above = seen[0].incarnation if seen[0] else 0
            after = leases.grant(before, node, at, fence_ttl(heartbeat, lease), above)
            floor = at + timedelta(seconds=fence_ttl(heartbeat, lease) - heartbeat)
            if before is None and node in self.records.unreadable:
                log.warning("node %s: unreadable record; rewriting it", node)
            try:
                revision = await compare_and_set(self.nodes, node, after, self.records.last(node))
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
            self.adopt_soon(node, after, seen)
            if leases.joined(before, after):
                log.info("node %s joined (incarnation %d)", node, after.incarnation)
                await self.bus.publish(
                    self.bus.subjects.node_joined(node), NodeJoined(**self.bus.stamp(), node=node)
                )
            return after
        return None

    async def grant_lease(self, node: str) -> LeaseRecord | None:
        """Store a grant for ``node`` in ``leases`` (compare-and-set), for the incarnation
        ``nodes`` gave it; None if that incarnation is not (or no longer) leased here."""
        assert self.leases is not None and self.lease_records is not None
        assert self.records is not None
        heartbeat, lease = self.timing()
        fence = fence_ttl(heartbeat, lease)
        for _ in range(3):
            before = self.lease_records.get(node)
            at = now()
            after = leases.extend(before, self.records.get(node), at, fence)
            if before is None or after is None:
                return None
            try:
                revision = await self.leases.update(
                    node, encode(after), last=self.lease_records.revision(node)
                )
            except KeyWrongLastSequenceError:
                fresh = await self.lease_records.reread(node)
                floor = at + timedelta(seconds=fence - heartbeat)
                if (
                    fresh is not None
                    and not fresh.revoked
                    and fresh.incarnation == before.incarnation
                    and fresh.granted_until >= floor
                ):
                    return fresh  # another replica granted this very heartbeat
                continue
            self.lease_records.note(node, revision, after)
            return after
        return None

    def adopt_soon(
        self, node: str, record: NodeRecord, seen: tuple[LeaseRecord | None, int | None]
    ) -> None:
        """Let ``leases`` grant the incarnation just granted in ``nodes``, if it cannot yet.
        ``seen`` is the lease record as read before that grant was stored."""
        assert self.tg is not None
        if (node, "adopt") in self.granting or leases.adopt(seen[0], record) is None:
            return
        self.granting.add((node, "adopt"))
        self.tg.create_task(self.adopt(node, record, seen), name=f"adopt-{node}")

    async def adopt(
        self, node: str, record: NodeRecord, seen: tuple[LeaseRecord | None, int | None]
    ) -> None:
        """Safe against a concurrent loss declaration: one that read ``record``'s grant wrote
        its revocation after that, so after ``seen`` was read, and this compare-and-set fails."""
        assert self.leases is not None and self.lease_records is not None
        try:
            after = leases.adopt(seen[0], record)
            if after is not None:
                revision = await compare_and_set(self.leases, node, after, seen[1])
                self.lease_records.note(node, revision, after)
                log.info("node %s: incarnation %d leased in both buckets", node, after.incarnation)
        except asyncio.CancelledError:
            raise
        except KeyWrongLastSequenceError:  # another replica's write: the next grant looks again
            with contextlib.suppress(Exception):
                await self.lease_records.reread(node)
        except Exception as exc:
            log.info("node %s: could not lease incarnation %d: %s", node, record.incarnation, exc)
        finally:
            self.granting.discard((node, "adopt"))

    # -- losses --------------------------------------------------------------------------------
    def bucket_back(self) -> None:
        if self.bucket_down and self.config.spec is not None:
            self.bucket_down = False
            self.grace_until = time.monotonic() + self.timing()[1]
            log.warning("the nodes bucket answers again: every node gets a full lease from now")

    async def bucket_answers(self) -> bool:
        """Do both lease buckets answer (their streams have leaders)?"""
        assert self.nodes is not None and self.leases is not None
        try:
            await self.nodes.status()
            await self.leases.status()
        except Exception:
            return False
        self.bucket_back()
        return True

    async def check_loop(self) -> None:
        while True:
            stop_if_cancelled()
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

    def overdue(self, node: str, lease: float, fence: float) -> tuple[NodeRecord, int] | None:
        """``node``'s record and its revision if neither bucket granted it for longer than a
        lease."""
        assert self.records is not None and self.lease_records is not None
        record = self.records.get(node)
        revision = self.records.revision(node)
        held = self.lease_records.get(node)
        if record is None or revision is None:
            return None
        if not leases.both_expired(record, held, now(), lease, fence):
            return None
        return record, revision

    async def expire(self, heartbeat: float, lease: float) -> None:
        assert self.records is not None and self.config.spec is not None
        fence = fence_ttl(heartbeat, lease)
        names = sorted(n.name for n in self.config.spec.nodes)
        due = [n for n in names if self.overdue(n, lease, fence) is not None]
        if due:
            await self.drain_heartbeats()
        for node in due:
            if self.nodes_unanswered(heartbeat, lease):
                return  # its declaration could not finish: wait until ``nodes`` answers again
            found = self.overdue(node, lease, fence)
            if found is not None:
                assert self.lease_records is not None
                record, revision = found
                silent = leases.silent_since(record, self.lease_records.get(node), now(), fence)
                with tracing.span("node lost", node=node):
                    # The declaration is a compare-and-set against the revision judged overdue,
                    # read before the revocation: whatever was stored in ``nodes`` since (a
                    # grant, another replica's declaration) makes it fail.
                    if await self.revoke(node, record, lease, fence):
                        await self.declare_lost(node, record, revision, silent)

    def nodes_unanswered(self, heartbeat: float, lease: float) -> bool:
        """Does ``nodes`` look unable to store a write now: one failed within a lease with none
        begun later stored, or one has waited longer than a heartbeat for its answer (a
        stream with no leader may keep a write waiting out its timeout)? Only for a lease: with
        no heartbeat to write, the next declaration is the next try."""
        at = time.monotonic()
        if any(at - began > heartbeat for began in self.nodes_writing.values()):
            return True
        failed = self.nodes_failed
        return failed is not None and at - failed[1] < lease

    def nodes_failing(self, began: float) -> None:
        failed = self.nodes_failed
        self.nodes_failed = (max(began, failed[0] if failed else began), time.monotonic())

    def nodes_answered(self, began: float) -> None:
        """A write in ``nodes`` begun at ``began`` was answered: a failure of a write begun
        before it no longer says the bucket cannot store."""
        if self.nodes_failed is not None and began >= self.nodes_failed[0]:
            self.nodes_failed = None

    async def revoke(self, node: str, record: NodeRecord, lease: float, fence: float) -> bool:
        """Revoke ``record``'s incarnation in ``leases`` (first of a loss declaration): True once
        it is revoked there, so no grant for it can be stored in that bucket any more."""
        assert self.leases is not None and self.lease_records is not None
        revoked = leases.revoke(self.lease_records.get(node), record, now(), lease, fence)
        if revoked is None:
            return False  # granted there meanwhile, or our copies disagree: check again
        try:
            last = self.lease_records.last(node)
            revision = await compare_and_set(self.leases, node, revoked, last)
        except KeyWrongLastSequenceError:
            with contextlib.suppress(Exception):  # the next check decides on the fresh record
                await self.lease_records.reread(node)
            return False
        except Exception as exc:  # electing a leader: the declaration waits for it
            log.info("could not revoke %s's lease (%s); will retry", node, exc)
            return False
        self.lease_records.note(node, revision, revoked)
        return True

    async def declare_lost(self, node: str, record: NodeRecord, last: int, silent: float) -> None:
        assert self.nodes is not None and self.records is not None
        lost = leases.declare_lost(record, now())
        began = time.monotonic()
        try:
            revision = await self.nodes.update(node, encode(lost), last=last)
        except KeyWrongLastSequenceError:
            # Not someone else's success unless the record says so: a grant, or another
            # replica's declaration, or our copy was stale. Re-read; the next check decides
            # again on the fresh record (and declares the loss if it still holds).
            self.nodes_answered(began)
            with contextlib.suppress(Exception):  # no answer: the next check re-reads again
                fresh = await self.records.reread(node)
                log.info("node %s: record changed under us, now %s", node, fresh)
            return
        except Exception as exc:  # electing a leader (the other bucket still grants meanwhile)
            self.nodes_failing(began)
            log.info("could not declare %s lost (%s); will retry", node, exc)
            return
        self.nodes_answered(began)
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

    # -- the two buckets' leaders ----------------------------------------------------------------
    async def keep_leaders_apart(self) -> None:
        while True:
            stop_if_cancelled()
            await asyncio.sleep(LEADERS_CHECK * (1 + random.random()))
            try:
                await self.separate_leaders()
            except Exception as exc:  # electing, or no cluster: the next check looks again
                log.debug("could not compare the lease buckets' leaders: %s", exc)

    async def separate_leaders(self) -> None:
        """If one server leads both lease buckets, ask the leases bucket's leader to step down:
        its death would otherwise cost both buckets an election at once, and every fence."""
        s = self.bus.subjects
        nodes = await self.bus.js_quick.stream_info(f"KV_{s.bucket_nodes}")
        held = await self.bus.js_quick.stream_info(f"KV_{s.bucket_leases}")
        a, b = nodes.cluster, held.cluster
        if a is None or b is None or not a.leader or a.leader != b.leader:
            return
        others = sorted(p.name for p in b.replicas or [] if p.current and p.name)
        if not others:
            return
        # A preferred successor (nats-server 2.11+): a random one would be the nodes
        # bucket's leader again half the time with three servers.
        to = random.choice(others)
        log.info(
            "%s leads both lease buckets; moving the leases bucket's leader to %s", a.leader, to
        )
        await self.bus.nc.request(
            f"$JS.API.STREAM.LEADER.STEPDOWN.KV_{s.bucket_leases}",
            msgspec.json.encode({"placement": {"preferred": to}}),
            timeout=2.0,
        )
