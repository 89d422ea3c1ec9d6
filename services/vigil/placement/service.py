"""The placement service's I/O: live caches in, compare-and-set decisions out."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    Alert,
    AppFailed,
    AppStopFailed,
    AppStopped,
    ConfigApplied,
    NodeJoined,
    NodeLost,
    PlacementDecided,
    ServiceDown,
    SwitchingDisabled,
)
from vigil.wire.records import (
    AddressStatus,
    AppStatus,
    FenceRecord,
    Intent,
    NodeRecord,
    Placement,
    ServiceRecord,
)

from ..core.bus import Bus, compare_and_set, ensure_stream, get_record, kv
from ..core.errors import Conflict
from ..core.reconciler import Reconciler, group_of
from ..core.subjects import address_key
from .fencing import Fencer
from .offering import members
from .rules import Snapshot, decide_one, fences_wanted

log = logging.getLogger(__name__)

COMMIT_WINDOW = 256  # placement writes in flight at once


def release_bound(lease: float) -> float:
    """How long a released group waits for a live node to let go of its address before it is
    placed back on that node: long enough for the node's own repair, short of the 5 s in which
    a cluster must converge after a fault heals."""
    return max(2.0, 4 * lease)


async def run_alert(command: str, kind: str, group: str, node: str | None, message: str) -> None:
    """The operator's alert command (cluster.alert), without a shell, bounded in time."""
    env = {
        **os.environ,
        "VIGIL_ALERT_KIND": kind,
        "VIGIL_ALERT_GROUP": group,
        "VIGIL_ALERT_NODE": node or "",
        "VIGIL_ALERT_MESSAGE": message,
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        code = await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        log.error("alert command %r timed out", command)
        return
    except OSError as exc:
        log.error("alert command %r failed to run: %s", command, exc)
        return
    if code != 0:
        log.error("alert command %r exited with %d", command, code)


class PlacementService(Reconciler):
    window = COMMIT_WINDOW  # groups are independent: their writes go out together

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus)
        # When we first had a cluster file: nodes can only join once membership has it too, so
        # the settle window counts from there, not from our own start.
        self.started: float | None = None
        self.settled = False  # every node had its time to join (see snapshot)
        self.snap: Snapshot | None = None
        self.snap_revisions: dict[str, int] = {}
        self.waiting: dict[str, float] = {}  # group -> since when (monotonic) it waits
        self.fencer: Fencer | None = None
        self.tg: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        s = self.bus.subjects
        await ensure_stream(self.bus)
        self.placement_bucket: KeyValue = await kv(self.bus, s.bucket_placement)
        self.nodes = self.cache(await kv(self.bus, s.bucket_nodes), NodeRecord)
        self.placements = self.cache(self.placement_bucket, Placement, key_of=str)
        observed = await kv(self.bus, s.bucket_observed)
        self.addresses = self.cache(observed, AddressStatus, keys="address.>", key_of=group_of)
        self.apps = self.cache(observed, AppStatus, keys="app.>", key_of=group_of)
        self.services_bucket = await kv(self.bus, s.bucket_services)
        self.services = self.cache(self.services_bucket, ServiceRecord, key_of=lambda _: "")
        self.intents = self.cache(await kv(self.bus, s.bucket_intents), Intent, key_of=str)
        await self.bus.subscribe(s.all_node_events, (NodeJoined, NodeLost), self.on_node)
        await self.bus.subscribe(
            s.all_address_events(), (AddressAcquired, AddressReleased), self.on_address
        )
        await self.bus.subscribe(s.config_applied, ConfigApplied, self.on_config)
        for what in ("stopped", "failed", "stop_failed"):
            await self.bus.subscribe(
                s.all_app_events("*", what), (AppFailed, AppStopFailed, AppStopped), self.on_app
            )
        async with asyncio.TaskGroup() as tg:
            self.tg = tg  # fence agents run in it, beside the reconcile loop
            self.start(tg)

    async def ensure_fencer(self) -> None:
        """The fencing bucket and its watch, from the first cluster file with a fence: a
        cluster without fences keeps no bucket (and reserves no storage) for them."""
        spec = self.config.spec
        if self.fencer is not None or self.tg is None or spec is None:
            return
        if spec.cluster.fence is None and all(n.fence is None for n in spec.nodes):
            return
        bucket = await kv(self.bus, self.bus.subjects.bucket_fencing)
        records = self.cache(bucket, FenceRecord)
        self.tg.create_task(records.run(), name="watch-fencing")
        self.fencer = Fencer(self.bus, bucket, records, self.run_alert)

    async def run_alert(self, kind: str, group: str, node: str | None, message: str) -> None:
        spec = self.config.spec
        if spec is not None and spec.cluster.alert:
            await run_alert(spec.cluster.alert, kind, group, node, message)

    # -- edge triggers: update the local view at once, then reconcile -------------------------
    async def on_node(self, event: NodeJoined | NodeLost) -> None:
        """A hint: the node's record in the bucket says what holds (a replica's late event,
        or a stray one, changes nothing)."""
        await self.nodes.reread(event.node)
        self.mark_all()

    async def on_address(self, event: AddressAcquired | AddressReleased) -> None:
        await self.addresses.reread(address_key(event.node, event.group))
        self.mark(event.group)

    async def on_app(self, event: AppFailed | AppStopFailed | AppStopped) -> None:
        """Remember where a group failed for good (a ban until its failure timeout) and where
        its stop failed (a block until the stop is confirmed or the node is lost)."""
        spec = self.config.spec
        group = spec.group(event.group) if spec else None
        if group is None:
            return
        until = time.time() + group.restart.failure_timeout
        node = event.node
        if isinstance(event, AppFailed):
            if not event.final:
                return
            log.warning("group %s failed for good on %s: %s", event.group, node, event.reason)
            await self.amend(
                event.group, lambda p: msgspec.structs.replace(p, banned={**p.banned, node: until})
            )
        elif isinstance(event, AppStopFailed):
            log.error(
                "group %s: stop failed on %s; it starts nowhere else until resolved",
                event.group,
                node,
            )
            await self.amend(
                event.group,
                lambda p: msgspec.structs.replace(
                    p, banned={**p.banned, node: until}, blocked_by=node
                ),
            )
        else:
            await self.amend(
                event.group,
                lambda p: (
                    msgspec.structs.replace(p, blocked_by=None) if p.blocked_by == node else p
                ),
            )
        self.mark(event.group)

    async def amend(self, group: str, change: Callable[[Placement], Placement]) -> None:
        """Change a group's record without a new decision (same epoch), compare-and-set."""
        for _ in range(5):
            entry_rev = self.placements.revision(group)
            current = self.placements.get(group)
            if current is None or entry_rev is None:
                return
            new = change(current)
            if new == current:
                return
            try:
                revision = await compare_and_set(self.placement_bucket, group, new, entry_rev)
            except Exception:
                fresh = await get_record(self.placement_bucket, group, Placement)
                entry = await self.placement_bucket.get(group)
                if fresh is not None and entry.revision:
                    self.placements.note(group, entry.revision, fresh)
                continue
            self.placements.note(group, revision, new)
            return
        log.error("could not record %s's failure after 5 tries; the next event retries", group)

    def snapshot(self) -> Snapshot | None:
        spec = self.config.spec
        if spec is None:
            return None
        up = {n for n, r in self.nodes.values().items() if r.state == "up"}
        held: dict[str, set[str]] = {}
        for status in self.addresses.values().values():
            if status.held and status.node in up:
                held.setdefault(status.group, set()).add(status.node)
        # Released groups still held somewhere: how long they have waited for the release.
        mono = time.monotonic()
        current = self.placements.values()
        waiting = {g for g, nodes in held.items() if nodes and (p := current.get(g)) and not p.node}
        self.waiting = {g: self.waiting.get(g, mono) for g in waiting}
        bound = release_bound(spec.cluster.timing.lease)
        # Settled once every node had a lease's worth of time (plus slack) to say hello.
        settle = 3 * spec.cluster.timing.lease
        if self.started is None:
            self.started = mono
        self.settled = mono - self.started >= settle or up >= {n.name for n in spec.nodes}
        lost = {n: r.incarnation for n, r in self.nodes.values().items() if r.state != "up"}
        return Snapshot(
            spec=spec,
            up=up,
            current=self.placements.values(),
            held_by=held,
            settled=self.settled,
            now=time.time(),
            intents=self.intents.values(),
            up_since={
                n: r.since.timestamp() for n, r in self.nodes.values().items() if r.state == "up"
            },
            release_overdue={g for g, t in self.waiting.items() if mono - t >= bound},
            release_bound=bound,
            incarnations={
                n: r.incarnation for n, r in self.nodes.values().items() if r.state == "up"
            },
            lost_incarnations=lost,
            # no fencer yet (bucket being opened): nothing is fenced, the rules wait (safe)
            fenced=self.fencer.fenced() if self.fencer else frozenset(),
            fence_errors=self.fencer.errors(lost) if self.fencer else {},
        )

    def keys(self) -> set[str]:
        return super().keys() | set(self.placements.values())

    async def prepare(self) -> None:
        await self.ensure_fencer()
        self.snap = self.snapshot()
        # The revisions the snapshot's placements were read at (same loop step: consistent).
        # A commit compares-and-sets against these, not the cache's newest: a record another
        # replica wrote after the snapshot must fail our write (decided on stale state), not be
        # overwritten by it (same epoch twice, and its alert sent twice).
        self.snap_revisions = {k: r for k, (r, _) in self.placements.entries.items()}
        if self.snap is not None and self.fencer is not None and self.tg is not None:
            self.fencer.want(self.snap.spec, fences_wanted(self.snap), self.tg)

    async def reconcile_key(self, key: str) -> None:
        snap = self.snap
        if snap is None or key == "":
            return
        decision = decide_one(snap, key)
        if decision is not None:
            await self.commit(decision, snap.current.get(key), self.snap_revisions.get(key, 0))

    async def after_batch(self) -> None:
        await self.reconcile_services()

    async def reconcile_services(self) -> None:
        """Which groups offer each service: the groups whose app runs where they are placed."""
        spec = self.config.spec
        if spec is None:
            return
        placements = self.placements.values()
        serving = {
            a.group
            for a in self.apps.values().values()
            if a.running and (p := placements.get(a.group)) is not None and p.node == a.node
        }
        up = {n for n, r in self.nodes.values().items() if r.state == "up"}
        intents = self.intents.values()
        starting = set()
        for g in spec.groups:
            p = placements.get(g.name)
            intent = intents.get(g.name)
            if intent is not None and intent.admin != "run":
                continue
            if p is None and not self.settled:
                # Not placed yet: the rules wait for its preferred node to join until the
                # cluster has settled, so its app is still expected (rules.py, "starting").
                starting.add(g.name)
            elif (
                p is not None
                and p.node in up
                and (g.on_failover == "restart" or p.node == g.preferred)
            ):
                starting.add(g.name)  # its app is expected to run: on its way up
        for service in spec.services:
            current = self.services.get(service.name)
            new = members(service, serving, current.members if current else None, starting)
            if current is not None and current.members == new:
                continue
            record = ServiceRecord(service.name, new, (current.epoch if current else 0) + 1)
            try:
                # against our copy's revision, or an unreadable record's (ours to rewrite)
                last = self.services.last(service.name)
                revision = await compare_and_set(self.services_bucket, service.name, record, last)
            except KeyWrongLastSequenceError:
                # Our copy is stale (another replica wrote, or our watch missed it): take the
                # bucket's record now, and decide again on it; never retry on the stale one.
                await self.services.reread(service.name)
                log.info("service %s changed under us; re-read, deciding again", service.name)
                self.mark("")  # services are reconciled after every batch
                continue
            except Exception as exc:  # the bus is failing: the periodic resync tries again
                log.info("service %s not written (%s); will retry", service.name, exc)
                continue
            self.services.note(service.name, revision, record)
            log.info("service %s offered by %s (epoch %d)", service.name, new, record.epoch)
            for group in current.members if current else []:
                if group not in new:
                    await self.down_for_the_dead(service.name, group, record.epoch)

    async def down_for_the_dead(self, service: str, group: str, epoch: int) -> None:
        """A lost node cannot say its services went down: say it for it (reason failure)."""
        up = {n for n, r in self.nodes.values().items() if r.state == "up"}
        spec = self.config.spec
        g = spec.group(group) if spec else None
        for status in self.apps.values().values():
            if status.group == group and status.running and status.node not in up:
                await self.bus.publish(
                    self.bus.subjects.service(service, "down", status.node),
                    ServiceDown(
                        **self.bus.stamp(),
                        service=service,
                        group=group,
                        node=status.node,
                        address=g.address if g else "",
                        epoch=epoch,
                        reason="failure",
                    ),
                )

    async def commit(self, decision: Placement, previous: Placement | None, last: int) -> None:
        """Store with compare-and-set on ``previous``'s revision ``last``; publish only when this
        replica's write won."""
        key = decision.group
        expected: int | None = last
        if previous is None:
            # a record that does not decode is ours to rewrite (compare-and-set on it)
            expected = self.placements.unreadable.get(key)
            if expected is not None:
                log.warning("rewriting the unreadable placement record of %s", key)
        try:
            revision = await compare_and_set(self.placement_bucket, key, decision, expected)
        except KeyWrongLastSequenceError as exc:
            await self.reread(key)
            raise Conflict(f"placement of {key} changed under us") from exc
        self.placements.note(key, revision, decision)
        log.info(
            "group %s -> %s (epoch %d): %s", key, decision.node, decision.epoch, decision.reason
        )
        if previous is not None and msgspec.structs.replace(previous, reason=decision.reason) == (
            decision
        ):
            return  # only the reason changed (waiting for a fence): nothing was decided
        await self.bus.publish(
            self.bus.subjects.placement(key),
            PlacementDecided(
                **self.bus.stamp(),
                group=key,
                node=decision.node,
                previous=previous.node if previous else None,
                epoch=decision.epoch,
                reason=decision.reason,
                moving_to=decision.moving_to,
            ),
        )
        if previous is not None and previous.node is not None and previous.node != decision.node:
            node_state = self.nodes.get(previous.node)
            if node_state is None or node_state.state != "up":
                await self.down_for_the_dead(key, key, decision.epoch)
        if previous is not None and previous.switching and not decision.switching:
            await self.switching_disabled(decision)

    async def reread(self, key: str) -> None:
        """After a lost compare-and-set: take the winner's record into the cache at once."""
        await self.placements.reread(key)

    async def switching_disabled(self, decision: Placement) -> None:
        """Announce it once (only the replica whose write won gets here) and run the alert."""
        s = self.bus.subjects
        message = (
            f"group {decision.group} landed on {decision.node}, the last eligible node of "
            "its list: switching is disabled until 'vigil enable'"
        )
        log.warning("%s", message)
        await self.bus.publish(
            s.group_event(decision.group, "switching_disabled"),
            SwitchingDisabled(
                **self.bus.stamp(), group=decision.group, node=decision.node, epoch=decision.epoch
            ),
        )
        await self.bus.publish(
            s.alert(decision.group),
            Alert(
                **self.bus.stamp(),
                kind="switching_disabled",
                group=decision.group,
                node=decision.node,
                message=message,
            ),
        )
        await self.run_alert("switching_disabled", decision.group, decision.node, message)
