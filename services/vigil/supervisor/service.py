"""The supervisor's I/O: placement and address state in, group runs and events out."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from nats.aio.msg import Msg

from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    AppFailed,
    AppStarted,
    AppStopFailed,
    AppStopped,
    ConfigApplied,
    MonitorsStarted,
    MonitorsStopped,
    PlacementDecided,
    ServiceDown,
    ServiceUp,
    WatchdogReported,
)
from vigil.wire.records import (
    AddressStatus,
    AppStatus,
    Intent,
    NodeRecord,
    Placement,
    ServiceRecord,
)

from ..core.bus import Bus, encode, kv
from ..core.reconciler import Reconciler, group_of
from ..core.runner import stop_if_cancelled
from ..core.stray import wait_until_listed
from ..core.subjects import address_key, app_key
from .bindable import LocalAddresses, local_addresses
from .lifecycle import GroupRun
from .restarts import RestartTracker
from .watchdog import Watchdog

log = logging.getLogger(__name__)

LOG_TAIL = 64 * 1024  # bytes of a group's log that `vigil logs` gets


class Supervisor(Reconciler):
    def __init__(
        self,
        bus: Bus,
        node: str,
        state_dir: Path,
        addresses_here: LocalAddresses = local_addresses,
    ) -> None:
        super().__init__(bus)
        self.node = node
        self.addresses_here = addresses_here
        self.here: set[IPv4Address] | None = None  # the batch's kernel addresses (None: unknown)
        self.state_dir = state_dir
        self.runs: dict[str, GroupRun] = {}
        self.trackers: dict[str, RestartTracker] = {}
        self.pending_down: dict[str, int] = {}  # group -> epoch: service down after the release
        self.offered: dict[tuple[str, str], int] = {}  # (service, group) offered here -> epoch
        self.down_reason: dict[str, str] = {}  # group -> why its services go down here
        self.watchdogs: dict[str, asyncio.Task[None]] = {}
        self.isolated = False  # cut off from the bus longer than our node's fence lasts
        self.announced: dict[str, str] = {}  # group -> "up" / "down", as last announced here
        self.local_ban: dict[str, float] = {}  # group -> unix time: failed for good here
        self.tg: asyncio.TaskGroup | None = None
        self.want: dict[str, int] = {}  # the current batch's groups to run here, with epochs
        # group -> the record here whose write failed (the bucket electing a leader): written
        # again by the reconcile until stored, unless a newer one is stored first
        self.unwritten: dict[str, AppStatus] = {}
        # group -> what our own node's address service last said of the address (its event on
        # this node's subject): (held, epoch, the revision of its record we had then). Its
        # record may not be storable for a while (the bucket electing a leader after a NATS
        # server died with the node we take over from): the app must not wait for an
        # acquisition's record, nor start on a record a release could not overwrite. A record
        # stored after the word (a newer revision) is the truth again.
        self.said: dict[str, tuple[bool, int, int]] = {}

    def log_path(self, group: str) -> Path:
        return self.state_dir / "logs" / f"{group}.log"

    async def run(self) -> None:
        s = self.bus.subjects
        await wait_until_listed(self.bus, self.config, self.node, "supervisor")
        self.observed = await kv(self.bus, s.bucket_observed)
        self.placements = self.cache(await kv(self.bus, s.bucket_placement), Placement, key_of=str)
        self.addresses = self.cache(
            self.observed, AddressStatus, keys=f"address.{self.node}.>", key_of=group_of
        )
        self.apps = self.cache(self.observed, AppStatus, keys="app.>", key_of=group_of)
        self.nodes = self.cache(await kv(self.bus, s.bucket_nodes), NodeRecord)
        self.intents = self.cache(await kv(self.bus, s.bucket_intents), Intent, key_of=str)
        self.services = self.cache(
            await kv(self.bus, s.bucket_services), ServiceRecord, key_of=lambda _: ""
        )
        await self.config.refresh()
        await self.forget_previous_life()
        await self.bus.subscribe(s.all_placements, PlacementDecided, self.on_placement)
        await self.bus.subscribe(
            s.all_address_events(self.node), (AddressAcquired, AddressReleased), self.on_address
        )
        await self.bus.subscribe(s.config_applied, ConfigApplied, self.on_config)
        await self.bus.nc.subscribe(s.logs_request(self.node), cb=self.on_logs)
        log.info("supervisor for node %s", self.node)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                tg.create_task(self.contact_loop(), name="bus-contact")
                self.start(tg)
        finally:
            await self.stop_all()

    async def contact_loop(self) -> None:
        """Self-fencing: a node cut off from the bus for longer than its address fence lasts
        may already have been declared lost, and its groups restarted elsewhere. Its addresses
        are fenced by then; stop its apps too, so a restart group never runs twice for long."""
        last_ok = time.monotonic()
        while True:
            stop_if_cancelled()
            spec = self.config.spec
            heartbeat = spec.cluster.timing.heartbeat if spec else 0.2
            fence = (spec.cluster.timing.lease if spec else 0.8) - 2 * heartbeat
            # Asked often, so "no contact" is measured to a fraction of the fence: pinging once
            # a heartbeat and waiting a heartbeat, one PING lost to a reconnect (a NATS server
            # died; the new connection was up 80 ms later) read as 0.4 s without contact, and
            # every app on the node was stopped (a chaos run: unserved for 8 s).
            interval = max(0.01, heartbeat / 4)
            if await self.bus.round_trip(interval):
                last_ok = time.monotonic()
                if self.isolated:
                    log.warning("back in contact with the bus: reconciling")
                    self.isolated = False
                    self.mark_all()
            elif not self.isolated and time.monotonic() - last_ok > fence:
                log.error(
                    "no contact with the bus for %.1fs: halting every group here",
                    time.monotonic() - last_ok,
                )
                self.isolated = True
                self.mark_all()
            await asyncio.sleep(interval)

    async def forget_previous_life(self) -> None:
        """We start with no children: record that, so no one waits on an app that died with
        our previous incarnation."""
        spec = self.config.spec
        for group in spec.groups if spec else []:
            await self.put_status(group.name, running=False, epoch=0)

    # -- edge triggers -------------------------------------------------------------------------
    async def on_placement(self, event: PlacementDecided) -> None:
        """A hint: re-read the decision when it may concern us; the bucket is the truth."""
        cached = self.placements.get(event.group)
        try:
            if self.node in (event.node, event.previous, event.moving_to) or (
                cached is not None and cached.node == self.node
            ):
                await self.placements.reread(event.group)
        finally:  # a failed re-read (JetStream electing a leader): the reconcile reads the cache
            self.mark(event.group)

    async def on_address(self, event: AddressAcquired | AddressReleased) -> None:
        # Our own node's address service says it released the address (it records it right
        # after): the halt method's last step is done. Before the re-read, which may fail.
        if event.node == self.node:
            revision = self.addresses.revision(address_key(self.node, event.group)) or 0
            held = isinstance(event, AddressAcquired)
            self.said[event.group] = (held, event.epoch, revision)
        if isinstance(event, AddressReleased) and event.group in self.pending_down:
            # Halt method, last step: the address is gone, so the service is down here.
            epoch = self.pending_down.pop(event.group)
            await self.service_down(event.group, epoch, self.down_reason.get(event.group, "user"))
        try:
            await self.addresses.reread(address_key(self.node, event.group))
            placement = self.placements.get(event.group)
            if (
                event.node == self.node
                and isinstance(event, AddressAcquired)
                and (placement is None or placement.epoch < event.epoch)
            ):
                # Acquired for a decision our cache has not seen: the address service read it
                # from the bucket, while our watch may lag for seconds after a leader election
                # (the app waited 11 s in a chaos run). The bucket's word, not the event's.
                await self.placements.reread(event.group)
        finally:
            self.mark(event.group)

    async def on_logs(self, msg: Msg) -> None:
        group = msg.data.decode(errors="replace").strip()
        spec = self.config.spec
        if spec is None or spec.group(group) is None:
            await msg.respond(f"vigil: unknown group {group!r}\n".encode())
            return
        path = self.log_path(group)
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - LOG_TAIL))
                data = f.read()
        except FileNotFoundError:
            data = f"(no log for {group} on {self.node} yet)\n".encode()
        await msg.respond(data)

    # -- reconcile -----------------------------------------------------------------------------
    def wanted(self) -> dict[str, int]:
        """Groups whose app should run here, with their epoch: placed here, address held at that
        epoch, not set offline by the operator, and not running on any other live node."""
        spec = self.config.spec
        if spec is None or self.isolated:
            return {}
        out: dict[str, int] = {}
        for group in spec.groups:
            placement = self.placements.get(group.name)
            intent = self.intents.get(group.name)
            if (
                placement is not None
                and placement.node == self.node
                and self.held_here(group.name, placement.epoch)
                and self.bindable(group.address)
                and (intent is None or intent.admin == "run")
                # address-only: away from its preferred node the group only holds the address,
                # so clients are refused at once and go to another instance of the service
                and (group.on_failover == "restart" or self.node == group.preferred)
                and (group.name in self.runs or not self.running_elsewhere(group.name))
            ):
                out[group.name] = placement.epoch
        return out

    def bindable(self, address: str) -> bool:
        """The address is on this node (the kernel's word; if it cannot be read: yes)."""
        return self.here is None or IPv4Interface(address).ip in self.here

    def held_here(self, group: str, epoch: int) -> bool:
        """Our address service holds ``group``'s address at ``epoch``: by the newer of its
        last word and its stored record."""
        key = address_key(self.node, group)
        said = self.said.get(group)
        if said is not None and (self.addresses.revision(key) or 0) <= said[2]:
            held, at, _ = said
            return held and at == epoch
        self.said.pop(group, None)  # a record stored since: the truth again
        address = self.addresses.get(key)
        return address is not None and address.held and address.epoch == epoch

    def running_elsewhere(self, group: str) -> str | None:
        """A live node whose app of ``group`` has not confirmed its stop: never two at once. A
        lost node's word no longer counts (its lease, and with it its address, has lapsed)."""
        for status in self.apps.values().values():
            if status.group != group or status.node == self.node:
                continue
            node = self.nodes.get(status.node)
            if (status.running or status.stop_failed) and node is not None and node.state == "up":
                return status.node
        return None

    def keys(self) -> set[str]:
        return super().keys() | set(self.runs)

    async def prepare(self) -> None:
        try:
            self.here = await asyncio.to_thread(self.addresses_here)
        except Exception as exc:  # netlink failed: the records alone decide, as before
            log.warning("could not list this node's addresses (%s)", exc)
            self.here = None
        self.want = self.wanted()

    async def reconcile_key(self, key: str) -> None:
        run = self.runs.get(key)
        epoch = self.want.get(key)
        if run is not None and epoch is None:
            self.down_reason.setdefault(key, "user")
            await run.halt()
        elif run is not None and epoch is not None:
            run.epoch = epoch
        elif epoch is not None:
            self.begin(key, epoch)
        await self.repair_status(key)

    async def repair_status(self, group: str) -> None:
        """Our app's record must say what we last meant it to: a write that failed (the bucket
        electing a leader) is written again, with the queue's backoff until it is stored. A
        record left saying "running" would keep every other node from starting the group."""
        status = self.unwritten.get(group)
        if status is not None:
            log.info("%s: writing its app record again (%s)", group, status)
            await self.write_status(status)
            if self.unwritten.get(group) is status:  # else a newer one failed meanwhile
                del self.unwritten[group]

    async def after_batch(self) -> None:
        await self.announce_services()

    async def announce_services(self) -> None:
        """FAN events for named services, from the node where it happens: a service is offered
        here while one of its member groups runs here."""
        running = {n: r for n, r in self.runs.items() if r.state == "running"}
        now: dict[tuple[str, str], int] = {}
        for record in self.services.values().values():
            for group in record.members:
                if group in running:
                    now[(record.name, group)] = running[group].epoch
        for (service, group), epoch in sorted(now.items()):
            if (service, group) not in self.offered:
                await self.bus.publish(
                    self.bus.subjects.service(service, "up", self.node),
                    ServiceUp(
                        **self.bus.stamp(),
                        service=service,
                        group=group,
                        node=self.node,
                        address=self.address_of(group),
                        epoch=epoch,
                    ),
                )
        for (service, group), epoch in sorted(self.offered.items()):
            if (service, group) not in now:
                await self.bus.publish(
                    self.bus.subjects.service(service, "down", self.node),
                    ServiceDown(
                        **self.bus.stamp(),
                        service=service,
                        group=group,
                        node=self.node,
                        address=self.address_of(group),
                        epoch=epoch,
                        reason=self.down_reason.get(group, "dependency"),
                    ),
                )
        self.offered = now

    def begin(self, name: str, epoch: int) -> None:
        spec = self.config.spec
        assert spec is not None and self.tg is not None
        group = spec.group(name)
        assert group is not None
        tracker = self.trackers.setdefault(name, RestartTracker(group.restart))
        tracker.policy = group.restart
        self.pending_down.pop(name, None)
        run = GroupRun(group, epoch, self.env(name), self.log_path(name), self, tracker)
        self.runs[name] = run
        self.tg.create_task(self.own(run), name=f"group-{name}")

    async def own(self, run: GroupRun) -> None:
        try:
            await run.main()
        except Exception:
            log.exception("group %s's run crashed", run.name)
        finally:
            if self.runs.get(run.name) is run:
                del self.runs[run.name]
            self.mark(run.name)

    def env(self, group: str) -> dict[str, str]:
        spec = self.config.spec
        assert spec is not None
        g = spec.group(group)
        assert g is not None
        address = IPv4Interface(g.address)
        return {
            **os.environ,
            **g.app.env,
            "VIGIL_GROUP": group,
            "VIGIL_NODE": self.node,
            "VIGIL_ADDRESS": str(address.ip),
            "VIGIL_ADDRESS_CIDR": str(address),
        }

    async def stop_all(self) -> None:
        """Shutdown: halt every group here (each run's halt method stops its app)."""
        for run in list(self.runs.values()):
            await run.halt()
            if run.app is not None:
                await run.app.stop(run.group.app.stop_timeout)

    # -- the Reporter: what the runs tell the world --------------------------------------------
    def address_of(self, group: str) -> str:
        spec = self.config.spec
        g = spec.group(group) if spec else None
        if g is not None:
            return g.address
        run = self.runs.get(group)  # a group that just left the cluster file
        return run.env["VIGIL_ADDRESS_CIDR"] if run else ""

    async def put_status(
        self,
        group: str,
        *,
        running: bool,
        epoch: int,
        pid: int | None = None,
        stop_failed: bool = False,
    ) -> None:
        """Record it; a failed write is left to the reconcile (``repair_status``) to repeat, so
        a transient bus error neither stops a run nor loses the record."""
        status = AppStatus(group, self.node, running, epoch, pid, stop_failed)
        # This write supersedes an older failed one: a repair may not send that one after it.
        self.unwritten.pop(group, None)
        try:
            await self.write_status(status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: could not record its app (%s); retrying", group, exc)
            self.unwritten[group] = status
            self.mark(group)

    async def write_status(self, status: AppStatus) -> None:
        key = app_key(self.node, status.group)
        revision = await self.observed.put(key, encode(status))
        self.apps.note(key, revision, status)

    async def app_started(self, group: str, epoch: int, pid: int) -> None:
        log.info("started %s (pid %d, epoch %d)", group, pid, epoch)
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "started"),
            AppStarted(**self.bus.stamp(), group=group, node=self.node, epoch=epoch, pid=pid),
        )
        await self.put_status(group, running=True, epoch=epoch, pid=pid or None)

    async def monitors_started(self, group: str, epoch: int, names: list[str]) -> None:
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "monitors_started"),
            MonitorsStarted(
                **self.bus.stamp(), group=group, node=self.node, epoch=epoch, monitors=names
            ),
        )

    async def monitors_stopped(self, group: str, epoch: int) -> None:
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "monitors_stopped"),
            MonitorsStopped(**self.bus.stamp(), group=group, node=self.node, epoch=epoch),
        )

    async def service_up(self, group: str, epoch: int) -> None:
        self.down_reason.pop(group, None)
        self.local_ban.pop(group, None)
        self.announced[group] = "up"
        self.mark(group)  # named services offered by this group come up with it
        await self.bus.publish(
            self.bus.subjects.service(group, "up", self.node),
            ServiceUp(
                **self.bus.stamp(),
                service=group,
                group=group,
                node=self.node,
                address=self.address_of(group),
                epoch=epoch,
            ),
        )

    async def service_down(self, group: str, epoch: int, reason: str) -> None:
        """Announced once per service up: a failure's down is not followed by a halt's."""
        if self.announced.get(group) != "up":
            return
        self.announced[group] = "down"
        await self.bus.publish(
            self.bus.subjects.service(group, "down", self.node),
            ServiceDown(
                **self.bus.stamp(),
                service=group,
                group=group,
                node=self.node,
                address=self.address_of(group),
                epoch=epoch,
                reason=reason,
            ),
        )

    async def app_failed(
        self, group: str, epoch: int, code: int | None, reason: str, final: bool
    ) -> None:
        log.warning("%s failed%s: %s", group, " for good" if final else "", reason)
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "failed"),
            AppFailed(
                **self.bus.stamp(),
                group=group,
                node=self.node,
                epoch=epoch,
                exit_code=code,
                reason=reason,
                final=final,
            ),
        )
        self.down_reason[group] = "failure"
        if final:  # the node is banned for the group from now on, whatever placement says yet
            g = self.config.spec.group(group) if self.config.spec else None
            timeout = g.restart.failure_timeout if g else 600.0
            self.local_ban[group] = time.time() + timeout
        self.spawn_watchdog(group, f"app failed: {reason}")
        await self.service_down(group, epoch, "failure")
        await self.put_status(group, running=False, epoch=epoch)
        self.mark(group)

    async def app_stopped(self, group: str, epoch: int, code: int | None) -> None:
        log.info("stopped %s (epoch %d)", group, epoch)
        self.pending_down[group] = epoch
        # The event goes out before the status is stored (one connection keeps that order), so
        # the address release it triggers is always seen after it.
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "stopped"),
            AppStopped(
                **self.bus.stamp(), group=group, node=self.node, epoch=epoch, exit_code=code
            ),
        )
        await self.put_status(group, running=False, epoch=epoch)
        self.spawn_watchdog(group, "app shut down")

    def spawn_watchdog(self, group: str, reason: str) -> None:
        """One watchdog per group on this node; a newer failure or stop replaces the older."""
        if self.tg is None:
            return
        run = self.runs.get(group)
        old = self.watchdogs.pop(group, None)
        if old is not None:
            old.cancel()

        def banned_until() -> float:
            placement = self.placements.get(group)
            recorded = placement.banned.get(self.node, 0.0) if placement else 0.0
            return max(recorded, self.local_ban.get(group, 0.0))

        def running_again() -> bool:
            current = self.runs.get(group)
            return current is not None and current is not run and current.state == "running"

        dog = Watchdog(group, run.last_pgid if run else None, self, banned_until, running_again)
        self.watchdogs[group] = self.tg.create_task(dog.run(reason), name=f"watchdog-{group}")

    async def watchdog(self, group: str, kind: str, detail: str) -> None:
        log.info("watchdog %s: %s (%s)", group, kind, detail)
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, f"watchdog_{kind}"),
            WatchdogReported(
                **self.bus.stamp(), group=group, node=self.node, kind=kind, detail=detail
            ),
        )

    async def stop_failed(self, group: str, epoch: int, reason: str) -> None:
        log.error("%s: stop failed: %s", group, reason)
        self.pending_down[group] = epoch
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "stop_failed"),
            AppStopFailed(
                **self.bus.stamp(), group=group, node=self.node, epoch=epoch, reason=reason
            ),
        )
        await self.put_status(group, running=False, epoch=epoch, stop_failed=True)
