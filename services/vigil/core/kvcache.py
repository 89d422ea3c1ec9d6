"""A live, local copy of a key-value bucket, kept fresh by a watch (level-triggered state).

Handlers read the cache instead of the bus, so a reconcile is a pure function over local data.
Unreadable records are logged and skipped, never passed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)
T = TypeVar("T")


class KVCache(Generic[T]):
    def __init__(
        self,
        bucket: KeyValue,
        kind: type[T],
        *,
        keys: str = ">",
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self.keys = keys
        self.on_change = on_change
        self.entries: dict[str, tuple[int, T]] = {}
        self.ready = asyncio.Event()
        self._decoder = msgspec.json.Decoder(kind)

    def get(self, key: str) -> T | None:
        hit = self.entries.get(key)
        return hit[1] if hit else None

    def revision(self, key: str) -> int | None:
        hit = self.entries.get(key)
        return hit[0] if hit else None

    def values(self) -> dict[str, T]:
        return {k: v for k, (_, v) in self.entries.items()}

    def note(self, key: str, revision: int, value: T) -> None:
        """Record our own write (or an event) before the watch echoes it back."""
        if revision >= (self.revision(key) or 0):
            self.entries[key] = (revision, value)

    async def run(self) -> None:
        """Watch forever; restart the watch if it dies (reconnects, server restarts)."""
        while True:
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch on %s failed (%s); restarting", self.bucket._name, exc)
                await asyncio.sleep(0.5)

    async def _watch(self) -> None:
        watcher = await self.bucket.watch(self.keys)
        try:
            async for entry in watcher:
                if entry is None:
                    self.ready.set()
                    continue
                key, revision = entry.key, entry.revision or 0
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    self.entries.pop(key, None)
                else:
                    try:
                        value = self._decoder.decode(entry.value)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.warning(
                            "%s/%s: unreadable record dropped: %s", self.bucket._name, key, exc
                        )
                        continue
                    if revision < (self.revision(key) or 0):
                        continue
                    self.entries[key] = (revision, value)
                if self.on_change is not None:
                    self.on_change(key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py lacks a hint
