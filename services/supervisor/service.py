"""The supervisor's I/O: placement and address state in, app processes and events out."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from ipaddress import IPv4Interface
from pathlib import Path

from schemas.events import (
    AddressAcquired,
    AddressReleased,
    AppFailed,
    AppStarted,
    AppStopped,
    ConfigApplied,
    PlacementDecided,
    ServiceDown,
    ServiceUp,
)
from schemas.records import AddressStatus, AppStatus, Placement

from ..core.bus import Bus, encode, kv
from ..core.clusterconfig import ConfigSource
from ..core.kvcache import KVCache
from ..core.runner import every
from ..core.subjects import address_key, app_key
from .process import AppProcess

log = logging.getLogger(__name__)

RESTART_BACKOFF = 1.0  # seconds before a crashed app is started again (issue #3 adds a policy)


class Supervisor:
    def __init__(self, bus: Bus, node: str, state_dir: Path) -> None:
        self.bus = bus
        self.node = node
        self.state_dir = state_dir
        self.config = ConfigSource(bus)
        self.dirty = asyncio.Event()
        self.apps: dict[str, AppProcess] = {}
        self.not_before: dict[str, float] = {}  # group -> monotonic time a restart may happen
        self.tg: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        s = self.bus.subjects
        mark = lambda _key: self.dirty.set()  # noqa: E731
        self.observed = await kv(self.bus, s.bucket_observed)
        self.placements = KVCache(await kv(self.bus, s.bucket_placement), Placement, on_change=mark)
        self.addresses = KVCache(
            self.observed, AddressStatus, keys=f"address.{self.node}.>", on_change=mark
        )
        await self.config.refresh()
        await self.forget_previous_life()
        await self.bus.subscribe(s.all_placements, PlacementDecided, self.on_placement)
        await self.bus.subscribe(
            s.all_address_events(self.node), (AddressAcquired, AddressReleased), self.on_address
        )
        await self.bus.subscribe(s.config_applied, ConfigApplied, self.on_config)
        log.info("supervisor for node %s", self.node)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                tg.create_task(self.placements.run(), name="watch-placement")
                tg.create_task(self.addresses.run(), name="watch-addresses")
                tg.create_task(every(1.0, self.tick), name="resync")
                tg.create_task(self.reconcile_loop(), name="reconcile")
        finally:
            await self.stop_all()

    async def forget_previous_life(self) -> None:
        """We start with no children: record that, so no one waits on an app that died with
        our previous incarnation."""
        spec = self.config.spec
        for group in spec.groups if spec else []:
            await self.observed.put(
                app_key(self.node, group.name),
                encode(AppStatus(group.name, self.node, False, 0)),
            )

    # -- edge triggers -------------------------------------------------------------------------
    async def on_placement(self, event: PlacementDecided) -> None:
        current = self.placements.get(event.group)
        if current is not None and current.epoch >= event.epoch:
            return
        placement = Placement(event.group, event.node, event.epoch, event.reason)
        self.placements.note(event.group, self.placements.revision(event.group) or 0, placement)
        self.dirty.set()

    async def on_address(self, event: AddressAcquired | AddressReleased) -> None:
        key = address_key(self.node, event.group)
        held = isinstance(event, AddressAcquired)
        self.addresses.note(
            key,
            self.addresses.revision(key) or 0,
            AddressStatus(event.group, self.node, event.address, held, event.epoch),
        )
        self.dirty.set()

    async def on_config(self, _: ConfigApplied) -> None:
        if await self.config.refresh():
            self.dirty.set()

    async def tick(self) -> None:
        await self.config.refresh()
        self.dirty.set()

    # -- reconcile -----------------------------------------------------------------------------
    async def reconcile_loop(self) -> None:
        await self.placements.ready.wait()
        await self.addresses.ready.wait()
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile failed; retrying on the next tick")

    def wanted(self) -> dict[str, int]:
        """Groups whose app should run here, with their epoch: placed here and address held."""
        spec = self.config.spec
        if spec is None:
            return {}
        out: dict[str, int] = {}
        for group in spec.groups:
            placement = self.placements.get(group.name)
            address = self.addresses.get(address_key(self.node, group.name))
            if (
                placement is not None
                and placement.node == self.node
                and address is not None
                and address.held
                and address.epoch == placement.epoch
            ):
                out[group.name] = placement.epoch
        return out

    async def reconcile(self) -> None:
        wanted = self.wanted()
        for group in [g for g in self.apps if g not in wanted]:
            await self.halt(group, reason="user")
        now = time.monotonic()
        for group, epoch in wanted.items():
            if group in self.apps:
                self.apps[group].epoch = epoch
            elif now >= self.not_before.get(group, 0.0):
                await self.start(group, epoch)
            else:
                asyncio.get_running_loop().call_at(
                    asyncio.get_running_loop().time() + self.not_before[group] - now,
                    self.dirty.set,
                )

    def env(self, group: str) -> dict[str, str]:
        spec = self.config.spec
        assert spec is not None
        g = spec.group(group)
        assert g is not None
        address = IPv4Interface(g.address)
        return {
            **os.environ,
            "VIGIL_GROUP": group,
            "VIGIL_NODE": self.node,
            "VIGIL_ADDRESS": str(address.ip),
            "VIGIL_ADDRESS_CIDR": str(address),
        }

    async def start(self, group: str, epoch: int) -> None:
        spec = self.config.spec
        assert spec is not None and self.tg is not None
        g = spec.group(group)
        assert g is not None
        try:
            app = await AppProcess.start(
                group,
                epoch,
                g.app.command,
                self.env(group),
                self.state_dir / "logs" / f"{group}.log",
            )
        except OSError as exc:
            log.error("cannot start %s: %s", group, exc)
            await self.failed(group, epoch, None, f"cannot start: {exc.strerror or exc}")
            return
        self.apps[group] = app
        log.info("started %s (pid %d, epoch %d)", group, app.pid, epoch)
        s = self.bus.subjects
        await self.bus.publish(
            s.app(self.node, group, "started"),
            AppStarted(**self.bus.stamp(), group=group, node=self.node, epoch=epoch, pid=app.pid),
        )
        await self.bus.publish(
            s.service(group, "up"),
            ServiceUp(
                **self.bus.stamp(), group=group, node=self.node, address=g.address, epoch=epoch
            ),
        )
        await self.observed.put(
            app_key(self.node, group), encode(AppStatus(group, self.node, True, epoch, app.pid))
        )
        self.tg.create_task(self.watch(app), name=f"watch-app-{group}")

    async def watch(self, app: AppProcess) -> None:
        """We are the app's parent: its exit is known the moment it happens."""
        code = await app.wait()
        if app.stopping or self.apps.get(app.group) is not app:
            return
        del self.apps[app.group]
        app.stopping = True
        await app.stop(0)  # leftovers of its process group
        log.warning("app of %s exited with %s; restarting in %gs", app.group, code, RESTART_BACKOFF)
        self.not_before[app.group] = time.monotonic() + RESTART_BACKOFF
        await self.failed(app.group, app.epoch, code, f"exited with {code}")
        self.dirty.set()

    async def failed(self, group: str, epoch: int, code: int | None, reason: str) -> None:
        s = self.bus.subjects
        await self.bus.publish(
            s.app(self.node, group, "failed"),
            AppFailed(
                **self.bus.stamp(),
                group=group,
                node=self.node,
                epoch=epoch,
                exit_code=code,
                reason=reason,
            ),
        )
        await self.service_down(group, epoch, "failure")
        await self.observed.put(
            app_key(self.node, group), encode(AppStatus(group, self.node, False, epoch))
        )

    async def service_down(self, group: str, epoch: int, reason: str) -> None:
        spec = self.config.spec
        g = spec.group(group) if spec else None
        await self.bus.publish(
            self.bus.subjects.service(group, "down"),
            ServiceDown(
                **self.bus.stamp(),
                group=group,
                node=self.node,
                address=g.address if g else "",
                epoch=epoch,
                reason=reason,
            ),
        )

    async def halt(self, group: str, reason: str) -> None:
        app = self.apps.pop(group)
        spec = self.config.spec
        g = spec.group(group) if spec else None
        timeout = g.app.stop_timeout if g else 5.0
        await self.service_down(group, app.epoch, reason)
        code = await app.stop(timeout)
        log.info("stopped %s (exit %s)", group, code)
        # The app status goes first: the address service releases only once it reads it.
        await self.observed.put(
            app_key(self.node, group), encode(AppStatus(group, self.node, False, app.epoch))
        )
        await self.bus.publish(
            self.bus.subjects.app(self.node, group, "stopped"),
            AppStopped(
                **self.bus.stamp(), group=group, node=self.node, epoch=app.epoch, exit_code=code
            ),
        )

    async def stop_all(self) -> None:
        for app in list(self.apps.values()):
            app.stopping = True
            await app.stop(2.0)
        self.apps.clear()
