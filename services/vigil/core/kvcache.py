"""A live, local copy of a key-value bucket, kept fresh by a watch (level-triggered state).

Handlers read the cache instead of the bus, so a reconcile is a pure function over local data.
Unreadable records are logged and skipped, never passed on; their keys and revisions are kept in
``unreadable`` so the record's owner can rewrite them (with a compare-and-set).

Events are hints: a handler that acts on one calls ``reread(key)`` first, so the cache holds
what the bucket says, never what a message claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .runner import stop_if_cancelled

log = logging.getLogger(__name__)
T = TypeVar("T")
CONSUMER_CHECK = 1.0  # seconds between checks that the watch's consumer still exists
# Seconds a watch's consumer outlives its subscriber. nats-py's default is 5 minutes: every
# restarted watch (each reconnect, each server death) left its consumer behind that long, and
# a long chaos run piled up 2,500 of them until creating one more failed ('maximum consumers
# limit reached') and the caches went stale for good. A stopped watch also deletes its own.
WATCH_IDLE = 10.0


class KVCache(Generic[T]):
    def __init__(
        self,
        bucket: KeyValue,
        kind: type[T],
        *,
        keys: str = ">",
        on_change: Callable[[str], None] | None = None,
        connection: Client | None = None,
    ) -> None:
        self.bucket = bucket
        self.connection = connection
        self.keys = keys
        self.on_change = on_change
        self.entries: dict[str, tuple[int, T]] = {}
        self.unreadable: dict[str, int] = {}  # key -> revision of a record that did not decode
        self.ready = asyncio.Event()
        self.watcher: KeyValue.KeyWatcher | None = None  # the current watch
        self._decoder = msgspec.json.Decoder(kind)

    def get(self, key: str) -> T | None:
        hit = self.entries.get(key)
        return hit[1] if hit else None

    def revision(self, key: str) -> int | None:
        hit = self.entries.get(key)
        return hit[0] if hit else None

    def last(self, key: str) -> int | None:
        """The revision a compare-and-set on ``key`` is made against: its record's, or the
        revision of one that did not decode (None: no such key)."""
        return self.revision(key) or self.unreadable.get(key)

    def values(self) -> dict[str, T]:
        return {k: v for k, (_, v) in self.entries.items()}

    def note(self, key: str, revision: int, value: T) -> None:
        """Record our own write (or an event) before the watch echoes it back."""
        if revision >= (self.revision(key) or 0):
            self.entries[key] = (revision, value)

    async def reread(self, key: str) -> T | None:
        """Read ``key`` from the bucket itself (not the watch) into the cache, and return it.

        Never older than the cache: the read may have raced a write the watch has delivered
        meanwhile (the event that prompted the read goes out before its record is written), so
        a key found missing is only forgotten by a deletion at least as new as what we hold."""
        try:
            entry = await self.bucket.get(key)
        except KeyNotFoundError as exc:  # deleted and purged keys too
            deleted = getattr(exc, "entry", None)
            if deleted is not None and (deleted.revision or 0) >= (self.revision(key) or 0):
                self.entries.pop(key, None)
            return self.get(key)
        revision = entry.revision or 0
        if revision < (self.revision(key) or 0):
            return self.get(key)
        if not entry.value:
            self.entries.pop(key, None)
            return None
        try:
            value = self._decoder.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.unreadable[key] = revision
            self.entries.pop(key, None)
            return None
        self.unreadable.pop(key, None)
        self.entries[key] = (revision, value)
        return value

    async def run(self) -> None:
        """Watch forever; restart the watch if it dies (reconnects, server restarts)."""
        while True:
            stop_if_cancelled()
            try:
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch on %s failed (%s); restarting", self.bucket._name, exc)
                await asyncio.sleep(0.5)

    def _reconnects(self) -> int:
        return int(self.connection.stats["reconnects"]) if self.connection is not None else 0

    async def _watch(self) -> None:
        """One watch, until it fails or the connection was re-established: the server side of
        a watch does not survive a server restart, and nats-py would notice only after its
        idle heartbeats went missing (10 s or more), leaving the cache stale meanwhile."""
        watcher = await self.bucket.watch(self.keys, inactive_threshold=WATCH_IDLE)
        self.watcher = watcher
        try:
            async with asyncio.TaskGroup() as tg:
                guards = [
                    tg.create_task(self._stop_on_reconnect(watcher), name="watch-guard"),
                    tg.create_task(self._stop_on_lost_consumer(watcher), name="consumer-guard"),
                ]
                await self._follow(watcher)
                for guard in guards:
                    guard.cancel()
        finally:
            with contextlib.suppress(nats.errors.Error):  # stopped already (a reconnect)
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py lacks a hint
            await self._delete_consumer(watcher)

    async def _delete_consumer(self, watcher: KeyValue.KeyWatcher) -> None:
        """Best effort: its server may be dead (then ``WATCH_IDLE`` ends it)."""
        sub = watcher._sub
        stream, name = getattr(sub, "_stream", None), getattr(sub, "_consumer", None)
        if not stream or not name or (self.connection and not self.connection.is_connected):
            return
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await asyncio.wait_for(self.bucket._js.delete_consumer(stream, name), CONSUMER_CHECK)

    async def _stop_on_reconnect(self, watcher: KeyValue.KeyWatcher) -> None:
        reconnects = self._reconnects()
        # nats-py's reconnect callback belongs to the connection's owner: poll its counter
        while self._reconnects() == reconnects:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        log.info("%s: reconnected; watching anew", self.bucket._name)
        await watcher.stop()  # type: ignore[no-untyped-call]  # ends _follow's iteration

    async def _stop_on_lost_consumer(self, watcher: KeyValue.KeyWatcher) -> None:
        """The watch's consumer lives on one server: when that server dies while our connection
        is to another, nothing reaches us, and nats-py re-creates the consumer only after two
        missed idle heartbeats (10 s): a stale cache meanwhile, and compare-and-sets failing on
        it (docs/lab.md, finding 2). Ask for the consumer every ``CONSUMER_CHECK`` seconds; no
        answer twice in a row (its server is dead, or it is gone) means watching anew, which
        reads every key again (a restart while JetStream elects leaders only costs a retry)."""
        missed = 0
        while missed < 2:
            stop_if_cancelled()
            await asyncio.sleep(CONSUMER_CHECK)
            if self.connection is not None and not self.connection.is_connected:
                missed = 0
                continue  # reconnecting: the other guard restarts the watch
            try:
                sub = watcher._sub
                assert sub is not None  # set by bucket.watch before it returns
                await asyncio.wait_for(sub.consumer_info(), CONSUMER_CHECK)
                missed = 0
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                missed += 1
        log.info("%s: the watch's consumer does not answer; watching anew", self.bucket._name)
        await watcher.stop()  # type: ignore[no-untyped-call]  # ends _follow's iteration

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        initial = True
        seen: set[str] = set()  # keys of the watch's first snapshot
        async for entry in watcher:
            if entry is None:
                if initial:  # a key deleted while we were not watching is gone
                    for key in set(self.entries) - seen:
                        del self.entries[key]
                        if self.on_change is not None:
                            self.on_change(key)
                    initial = False
                self.ready.set()
                continue
            key, revision = entry.key, entry.revision or 0
            seen.add(key)
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self.entries.pop(key, None)
                self.unreadable.pop(key, None)
            else:
                try:
                    value = self._decoder.decode(entry.value)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("%s/%s: unreadable record skipped: %s", self.bucket._name, key, exc)
                    self.entries.pop(key, None)
                    self.unreadable[key] = revision
                    if self.on_change is not None:
                        self.on_change(key)
                    continue
                if revision < (self.revision(key) or 0):
                    continue
                self.unreadable.pop(key, None)
                self.entries[key] = (revision, value)
            if self.on_change is not None:
                self.on_change(key)
