"""The shape every reconciling service shares (controller-runtime style).

Handlers only update local state and ``mark(key)`` (a group, usually); a keyed work queue
(``workqueue``) runs one reconcile per key at a time over fresh local copies of the buckets; a
periodic resync (and a changed cluster file) marks every key, so a lost message is repaired.
A failing key backs off alone (``errors`` says how each kind of failure is retried); the others
go on.

A batch is every key due at one moment: ``prepare`` reads what the keys share once (a snapshot,
the interface's addresses), ``reconcile_key`` acts for one key, ``after_batch`` does what spans
keys (a service's members).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nats.js.kv import KeyValue

from vigil.wire.events import ConfigApplied

from .bus import Bus
from .clusterconfig import ConfigSource
from .errors import Conflict, Permanent, ReconcileError, Transient, classify
from .kvcache import KVCache
from .runner import every, stop_if_cancelled
from .workqueue import WorkQueue

log = logging.getLogger(__name__)
T = TypeVar("T")

RESYNC = 1.0  # seconds between level-triggered reconciles of every key

KeyOf = Callable[[str], str | None]  # a bucket key -> the reconcile key it affects (None: all)


def group_of(key: str) -> str:
    """``address.<node>.<group>`` / ``app.<node>.<group>`` (bucket ``observed``) -> group."""
    return key.rsplit(".", 1)[-1]


class Reconciler:
    window = 1  # keys of one batch reconciled concurrently

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.config = ConfigSource(bus)
        self.queue = WorkQueue()
        self.wake = asyncio.Event()
        self.caches: list[KVCache[Any]] = []

    # -- marking -------------------------------------------------------------------------------
    def mark(self, key: str) -> None:
        """Something about ``key`` changed: reconcile it soon, even while it backs off."""
        self.queue.hint(key)
        self.wake.set()

    def mark_all(self) -> None:
        for key in self.keys():
            self.queue.mark(key)
        self.wake.set()

    def keys(self) -> set[str]:
        """Every key to reconcile: the cluster file's groups (services add what they track)."""
        spec = self.config.spec
        return {g.name for g in spec.groups} if spec else set()

    def cache(
        self, bucket: KeyValue, kind: type[T], keys: str = ">", key_of: KeyOf | None = None
    ) -> KVCache[T]:
        """A live copy of (part of) a bucket; a change marks ``key_of(key)``, or every key."""

        def changed(key: str) -> None:
            target = key_of(key) if key_of is not None else None
            if target is None:
                self.mark_all()
            else:
                self.mark(target)

        cache = KVCache(bucket, kind, keys=keys, on_change=changed, connection=self.bus.nc)
        self.caches.append(cache)
        return cache

    async def on_config(self, _: ConfigApplied) -> None:
        if await self.config.refresh():
            self.mark_all()

    async def tick(self) -> None:
        await self.config.refresh()
        self.mark_all()

    # -- running -------------------------------------------------------------------------------
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
            stop_if_cancelled()
            keys = self.queue.take(time.monotonic())
            if keys:
                await self.reconcile_batch(keys)
                continue
            self.wake.clear()
            wait = self.queue.next_wake(time.monotonic())
            if wait == 0.0:
                continue
            # not wait_for, which may swallow a cancellation (runner.stop_if_cancelled)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    async def reconcile_batch(self, keys: list[str]) -> None:
        try:
            await self.prepare()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for key in keys:
                self.settle(key, exc)
            return
        window = asyncio.Semaphore(self.window)

        async def one(key: str) -> BaseException | None:
            async with window:
                try:
                    await self.reconcile_key(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    return exc
                return None

        results = await asyncio.gather(*(one(k) for k in keys))
        for key, error in zip(keys, results, strict=True):
            self.settle(key, error)
        try:
            await self.after_batch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.DEBUG if isinstance(classify(exc), Conflict) else logging.WARNING
            log.log(level, "%s: after a reconcile: %s", type(self).__name__, exc)
            self.mark_all()  # do it again soon; the keys' backoff paces it

    def settle(self, key: str, exc: BaseException | None) -> None:
        """Tell the queue how ``key`` went, and log it at the rate its kind deserves."""
        if exc is None:
            self.queue.done(key, time.monotonic())
            return
        error = classify(exc)
        unexpected = error is None
        outcome = self.queue.done(key, time.monotonic(), error or Transient(repr(exc)))
        if isinstance(error, Conflict) and outcome.failures < 10:
            log.debug("%s: compare-and-set lost (%s); re-reading", key, exc)
        elif isinstance(error, Permanent):
            if outcome.first:
                log.error("%s: %s; not retried until something changes", key, exc)
                self.on_permanent(key, error)
        elif unexpected and outcome.first:
            log.error("%s: reconcile failed; retrying with backoff", key, exc_info=exc)
        else:
            n = outcome.failures
            level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG  # 1, 2, 4, 8, ...
            log.log(
                level, "%s: %s (failure %d); retry in %.2fs", key, exc, n, outcome.retry_in or 0
            )
        self.wake.set()

    def on_permanent(self, key: str, error: ReconcileError) -> None:
        """A key that fails for good: services publish an alert when one fits."""

    async def prepare(self) -> None:
        """Read what every key of a batch shares, once."""

    async def reconcile_key(self, key: str) -> None:
        raise NotImplementedError

    async def after_batch(self) -> None:
        """What spans keys, once the batch's keys are done."""
