"""The shape every service shares (controller-runtime style): handlers only update local state
and mark the service dirty; one reconcile runs at a time over fresh local copies of the buckets;
a periodic resync (and a changed cluster file) marks it dirty too, so a lost message is repaired.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

import msgspec
from nats.js.kv import KeyValue

from vigil.wire.events import ConfigApplied, PlacementDecided
from vigil.wire.records import Placement

from .bus import Bus
from .clusterconfig import ConfigSource
from .kvcache import KVCache
from .runner import every

log = logging.getLogger(__name__)
T = TypeVar("T")

RESYNC = 1.0  # seconds between level-triggered reconciles


class Reconciler:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.config = ConfigSource(bus)
        self.dirty = asyncio.Event()
        self.caches: list[KVCache[Any]] = []

    def mark(self, _key: str = "") -> None:
        self.dirty.set()

    def cache(self, bucket: KeyValue, kind: type[T], keys: str = ">") -> KVCache[T]:
        """A live copy of (part of) a bucket; every change marks us dirty."""
        cache = KVCache(bucket, kind, keys=keys, on_change=self.mark)
        self.caches.append(cache)
        return cache

    async def on_config(self, _: ConfigApplied) -> None:
        if await self.config.refresh():
            self.dirty.set()

    async def tick(self) -> None:
        await self.config.refresh()
        self.dirty.set()

    def start(self, tg: asyncio.TaskGroup) -> None:
        """The caches' watches, the resync and the reconcile loop, owned by ``tg``."""
        for cache in self.caches:
            tg.create_task(cache.run(), name=f"watch-{cache.bucket._name}-{cache.keys}")
        tg.create_task(every(RESYNC, self.tick), name="resync")
        tg.create_task(self.reconcile_loop(), name="reconcile")

    async def reconcile_loop(self) -> None:
        for cache in self.caches:
            await cache.ready.wait()
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile failed; retrying on the next tick")

    async def reconcile(self) -> None:
        raise NotImplementedError


def note_placement(cache: KVCache[Placement], event: PlacementDecided) -> bool:
    """Take a decision into a node's local copy at once (the bucket's watch follows); False
    for a stale or duplicate one."""
    current = cache.get(event.group)
    if current is not None and current.epoch >= event.epoch:
        return False
    if current is None:
        placement = Placement(
            event.group, event.node, event.epoch, event.reason, moving_to=event.moving_to
        )
    else:  # keep what the event does not carry (bans, switching) until the bucket's copy
        placement = msgspec.structs.replace(
            current,
            node=event.node,
            epoch=event.epoch,
            reason=event.reason,
            moving_to=event.moving_to,
        )
    cache.note(event.group, cache.revision(event.group) or 0, placement)
    return True
