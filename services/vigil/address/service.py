"""The address service's I/O: heartbeats and the fence, netlink, gratuitous ARP, events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from ipaddress import IPv4Address, IPv4Interface

import msgspec

from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    AppFailed,
    AppStopFailed,
    AppStopped,
    ConfigApplied,
    LeaseGranted,
    PlacementDecided,
)
from vigil.wire.records import AddressStatus, AppStatus, Placement

from ..core.bus import Bus, all_records, encode, get_record, kv
from ..core.errors import Conflict
from ..core.reconciler import Reconciler, group_of
from ..core.stray import wait_until_listed
from ..core.subjects import address_key, app_key
from .fence import Fence
from .garp import GarpDropped, send_gratuitous_arp
from .heart import Beat, Heart
from .netlink import Netlink
from .plan import Acquire, Action, Recorded, Release, Want, plan, record_fix

log = logging.getLogger(__name__)


_GRANT = msgspec.json.Decoder(LeaseGranted)


class AddressService(Reconciler):
    def __init__(self, bus: Bus, node: str, interface: str | None = None) -> None:
        super().__init__(bus)
        self.node = node
        self.interface = interface
        self.held: dict[str, int] = {}  # group -> epoch we acquired it at
        # Addresses this node holds or held, by group, as it last announced them: a group that
        # left the cluster file still has its address released (and fenced until then).
        self.remembered: dict[IPv4Interface, str] = {}
        self.retry_after_heartbeat = False
        self.fence_expiry = 0.0  # monotonic time our current lease lapses
        self.incarnation = 0  # ours, as membership last granted it
        self.missed = 0  # heartbeats in a row without a grant
        self.generation = 0  # the heart's, as it last told us (it bumps it when it lets go)
        self.heart: Heart | None = None
        self.tg: asyncio.TaskGroup | None = None
        self.netlink: Netlink | None = None
        self.actions: dict[str, list[Action]] = {}  # the current batch's plan, by group
        self.actual: set[IPv4Interface] = set()  # the interface's addresses, read for the batch

    # -- set-up --------------------------------------------------------------------------------
    def ifname(self, spec: ClusterSpec) -> str:
        if self.interface:
            return self.interface
        node = next((n for n in spec.nodes if n.name == self.node), None)
        return node.interface if node else "eth0"

    def managed(self) -> dict[IPv4Interface, str]:
        spec = self.config.spec
        current = {IPv4Interface(g.address): g.name for g in spec.groups} if spec else {}
        return {**self.remembered, **current}

    async def run(self) -> None:
        # Nothing to do, and no lease to hold, before a cluster file that lists this node: a
        # node it does not know must not fence or address any interface (not even eth0).
        await wait_until_listed(self.bus, self.config, self.node, "address")
        assert self.config.spec is not None
        ifname = self.ifname(self.config.spec)
        # pyroute2's IPRoute is synchronous and refuses to run on the loop's thread.
        self.netlink = await asyncio.to_thread(Netlink, ifname)
        self.heart = Heart(self.bus, self.node, Fence(ifname), self.timing, self.on_beat)
        await self.heart.start()
        try:
            await self.serve(ifname)
        finally:
            await self.heart.stop()
            await asyncio.to_thread(self.netlink.close)

    async def serve(self, ifname: str) -> None:
        assert self.heart is not None
        s = self.bus.subjects
        await self.heart.install(self.vips())  # no lease yet: nothing of ours answers
        observed = await kv(self.bus, s.bucket_observed)
        self.observed = observed
        for status in (
            await all_records(observed, AddressStatus, f"address.{self.node}.")
        ).values():
            if status.held:
                self.remembered[IPv4Interface(status.address)] = status.group
        self.placement_bucket = await kv(self.bus, s.bucket_placement)
        self.placements = self.cache(self.placement_bucket, Placement, key_of=str)
        self.apps = self.cache(observed, AppStatus, keys=f"app.{self.node}.>", key_of=group_of)
        # what we last recorded: repaired when it disagrees with what we hold
        self.mine = self.cache(
            observed, AddressStatus, keys=f"address.{self.node}.>", key_of=group_of
        )
        await self.bus.subscribe(s.all_placements, PlacementDecided, self.on_placement)
        for what in ("stopped", "failed", "stop_failed"):
            await self.bus.subscribe(
                s.all_app_events(self.node, what),
                (AppStopped, AppFailed, AppStopFailed),
                self.on_app,
            )
        await self.bus.subscribe(s.config_applied, ConfigApplied, self.on_config)
        log.info("address service for node %s on %s", self.node, ifname)
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            tg.create_task(self.heart.beating(), name="heartbeat")
            self.start(tg)

    def vips(self) -> list[IPv4Address]:
        return [a.ip for a in self.managed()]

    def timing(self) -> tuple[float, float]:
        spec = self.config.spec
        assert spec is not None
        return spec.cluster.timing.heartbeat, spec.cluster.timing.lease

    # -- the lease -----------------------------------------------------------------------------
    def on_beat(self, beat: Beat) -> None:
        """How the heart's last heartbeat went (on our loop). Only a grant extends the fence;
        the heart does that on its own thread (address/heart.py): this learns the outcome."""
        self.fence_expiry = beat.expiry
        self.missed = beat.missed
        self.generation = beat.generation  # it changes only with a drop
        if beat.drop is not None:
            # The heart let go of the lease already; forget our holdings at once, so that no
            # acquisition meanwhile leases them again under the new generation.
            self.held.clear()
            assert self.tg is not None
            with contextlib.suppress(RuntimeError):  # the service is stopping: nothing to drop
                self.tg.create_task(self.drop_all(beat.drop), name="drop-all")
        if beat.incarnation != self.incarnation:
            self.incarnation = beat.incarnation
            self.mark_all()
        if beat.granted and self.retry_after_heartbeat:
            self.retry_after_heartbeat = False
            self.mark_all()

    async def renew_fence(self) -> None:
        """Lease what we hold now, for what remains of the current lease (on the heart's
        thread, serialised with its renewals)."""
        assert self.heart is not None
        await self.heart.hold(self.leased(), self.vips(), self.generation)

    def leased(self) -> list[IPv4Address]:
        by_group = {g: a for a, g in self.managed().items()}
        return [by_group[g].ip for g in self.held if g in by_group]

    def in_lease(self) -> bool:
        return time.monotonic() < self.fence_expiry

    async def drop_all(self, why: str) -> None:
        """Our lease lapsed (the heart let go of it already: the kernel answers for none of our
        addresses): the cluster may already have moved our groups. Let go of everything
        locally; the next reconcile re-reads the bus before taking anything back."""
        assert self.netlink is not None
        log.error("%s: releasing every address held here", why)
        self.held.clear()
        managed = self.managed()
        netlink = self.netlink
        try:
            for address in await asyncio.to_thread(netlink.addresses) & managed.keys():
                await asyncio.to_thread(netlink.remove, address)
        except Exception as exc:  # unanswered anyway (no lease): the reconcile removes them
            log.error("could not remove every address (%s); the reconcile retries", exc)
        self.mark_all()

    # -- edge triggers -------------------------------------------------------------------------
    async def on_placement(self, event: PlacementDecided) -> None:
        """A hint: re-read the decision from the bucket when it may concern us, then act on
        what the bucket says (a stray message with a big epoch changes nothing)."""
        cached = self.placements.get(event.group)
        if self.node in (event.node, event.previous, event.moving_to) or (
            cached is not None and cached.node == self.node
        ):
            await self.placements.reread(event.group)
        self.mark(event.group)

    async def on_app(self, event: AppStopped | AppFailed | AppStopFailed) -> None:
        await self.apps.reread(app_key(self.node, event.group))
        self.mark(event.group)

    # -- reconcile -----------------------------------------------------------------------------
    def keys(self) -> set[str]:
        return super().keys() | set(self.managed().values())

    async def prepare(self) -> None:
        """One plan for the batch, from one read of the interface's addresses."""
        spec = self.config.spec
        assert spec is not None and self.netlink is not None
        groups = {g.name: g for g in spec.groups}
        desired = {
            p.group: Want(p.group, IPv4Interface(groups[p.group].address), p.epoch)
            for p in self.placements.values().values()
            if p.node == self.node and p.group in groups
        }
        running = {a.group for a in self.apps.values().values() if a.running}
        actual = self.actual = await asyncio.to_thread(self.netlink.addresses)
        # Forget holdings whose address vanished (removed by hand, or by the kernel).
        managed = self.managed()
        for group in list(self.held):
            if not any(managed.get(a) == group for a in actual):
                del self.held[group]
        moving = {p.group for p in self.placements.values().values() if p.moving_to is not None}
        self.actions = {}
        for action in plan(desired, managed, actual, self.held, running, moving):
            self.actions.setdefault(action.group, []).append(action)

    async def reconcile_key(self, key: str) -> None:
        for action in self.actions.pop(key, []):
            if isinstance(action, Release):
                await self.release(action)
            else:
                await self.acquire(action)
        await self.repair_record(key)

    async def repair_record(self, group: str) -> None:
        """The observed record must say what we hold: an address dropped at a lease lapse (or
        removed by hand) is recorded released, else placement waits for it forever; one
        acquired whose record failed to be written is recorded held, else the supervisor never
        starts the app (issue 10); a record that does not decode is rewritten."""
        key = address_key(self.node, group)
        status = self.mine.get(key)
        if key in self.mine.unreadable and status is None:
            address = next((a for a, g in self.managed().items() if g == group), None)
            if address is not None:
                log.warning("rewriting the unreadable record %s", key)
                await self.announce(
                    group, address, self.held.get(group, 0), held=group in self.held
                )
            return
        placement = self.placements.get(group)
        recorded = Recorded(status.held, status.epoch) if status is not None else None
        address = IPv4Interface(status.address) if status is not None else None
        if group in self.held:
            address = next((a for a, g in self.managed().items() if g == group), address)
        present = address is not None and address in self.actual
        fix = record_fix(
            recorded, self.held.get(group), present, placement.epoch if placement else 0
        )
        if fix is None or address is None:
            return
        log.warning("%s: recorded as %s, not what is held here: rewriting it", group, recorded)
        await self.announce(group, address, fix.epoch, held=fix.held)

    async def acquire(self, action: Acquire) -> None:
        assert self.netlink is not None
        if not self.in_lease():
            log.info("not acquiring %s: this node holds no lease right now", action.group)
            self.retry_after_heartbeat = True
            return
        # Read the decision fresh from the bus: a cache can lag behind after a reconnect, and
        # acquiring on a stale decision is how an address ends up on two nodes.
        fresh = await get_record(self.placement_bucket, action.group, Placement)
        if fresh is not None and fresh.node == self.node and fresh.incarnation != self.incarnation:
            log.info(
                "not acquiring %s: placed for incarnation %d of %s, we are %d",
                action.group,
                fresh.incarnation,
                self.node,
                self.incarnation,
            )
            return  # placement gives it anew once it sees our incarnation
        if fresh is None or fresh.node != self.node or fresh.epoch != action.epoch:
            log.info("not acquiring %s: placement moved on (%s)", action.group, fresh)
            if fresh is not None:
                revision = (await self.placement_bucket.get(action.group)).revision or 0
                self.placements.note(action.group, revision, fresh)
            raise Conflict(f"placement of {action.group} moved on")
        self.held[action.group] = action.epoch
        self.remembered[action.address] = action.group
        # Lease first, then the address: the address must answer the moment it exists.
        await self.renew_fence()
        await asyncio.to_thread(self.netlink.add, action.address)
        try:
            send_gratuitous_arp(self.netlink.ifname, action.address.ip, count=1)
        except GarpDropped:
            # The fence dropped it: our lease ran out while we were acquiring (a starved CPU).
            # Undo, and try again once the next heartbeat has renewed the lease.
            log.warning(
                "lease ran out while acquiring %s; retrying after the next heartbeat", action.group
            )
            self.held.pop(action.group, None)
            await asyncio.to_thread(self.netlink.remove, action.address)
            self.retry_after_heartbeat = True
            return
        except OSError as exc:  # the address is up and leased: announce it all the same
            log.warning("gratuitous ARP for %s failed: %s", action.address, exc)
        log.info("acquired %s for %s (epoch %d)", action.address, action.group, action.epoch)
        await self.announce(action.group, action.address, action.epoch, held=True)
        # A second announcement a little later catches a neighbour that missed the first.
        asyncio.get_running_loop().call_later(
            0.2, self._garp_again, self.netlink.ifname, action.address.ip, action.group
        )

    def _garp_again(self, ifname: str, ip: IPv4Address, group: str) -> None:
        if group in self.held:
            try:
                send_gratuitous_arp(ifname, ip, count=1)
            except OSError as exc:
                log.warning("repeat gratuitous ARP for %s failed: %s", ip, exc)

    async def release(self, action: Release) -> None:
        assert self.netlink is not None
        epoch = self.held.pop(action.group, 0)
        await asyncio.to_thread(self.netlink.remove, action.address)
        self.remembered.pop(action.address, None)
        await self.renew_fence()
        log.info("released %s of %s", action.address, action.group)
        placement = self.placements.get(action.group)
        await self.announce(
            action.group, action.address, placement.epoch if placement else epoch, held=False
        )

    async def announce(self, group: str, address: IPv4Interface, epoch: int, *, held: bool) -> None:
        """Say it, then record it (one connection keeps that order): whoever acts on the
        record acts after the event is out, so the history reads in causal order. A handler
        that re-reads the record on the event may still find the old one: the record's own
        change marks it again."""
        s = self.bus.subjects
        kind = AddressAcquired if held else AddressReleased
        await self.bus.publish(
            s.address(self.node, group, "acquired" if held else "released"),
            kind(
                **self.bus.stamp(), group=group, node=self.node, address=str(address), epoch=epoch
            ),
        )
        status = AddressStatus(group, self.node, str(address), held, epoch)
        key = address_key(self.node, group)
        revision = await self.observed.put(key, encode(status))
        self.mine.note(key, revision, status)
