"""The node's heart: heartbeats, lease grants and the kernel fence, on a thread of their own.

Why a thread: whatever the address service consumes is decoded on its event loop, and a flood
there (an authorized but misbehaving peer) delayed the heartbeat past the lease
(docs/security.md, "Floods"). The heart has its own event loop and its own NATS connection, so a
busy service loop (or a slow handler) cannot hold up a heartbeat or a fence renewal; only the
GIL is shared, and it changes hands every few milliseconds.

The heart owns the lease (docs/safety.md): the fence is renewed only on a grant, up to when the
heartbeat left; an incarnation change or a lapsed lease lets go of everything. Every fence
operation, the service's included, runs on the heart's loop under one lock: nft never runs
twice at once, and libnftables' context is used from one thread.

The service tells the heart what it holds with ``hold``; the heart tells the service how each
heartbeat went with ``on_beat`` (called on the service's loop). When the heart lets go of
everything it bumps its generation: holdings the service sends from an older generation (it had
not heard yet) are not leased.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol, TypeVar

import msgspec

from vigil.wire.events import Heartbeat, LeaseGranted

from ..core.bus import Bus, encode
from ..core.lease import fence_ttl
from ..core.runner import stop_if_cancelled

log = logging.getLogger(__name__)
T = TypeVar("T")

_GRANT = msgspec.json.Decoder(LeaseGranted)


class FenceOps(Protocol):
    """What the heart needs of ``Fence`` (a test passes a recording one)."""

    async def install(self, vips: Iterable[IPv4Address]) -> None: ...

    async def renew(
        self, leased: Iterable[IPv4Address], ttl_ms: int, vips: Iterable[IPv4Address]
    ) -> None: ...


@dataclass(frozen=True)
class Beat:
    """How one heartbeat went, for the service's loop."""

    expiry: float  # monotonic time the lease lapses
    incarnation: int  # ours, as membership last granted it
    missed: int  # heartbeats in a row without a grant
    generation: int
    granted: bool
    drop: str | None  # why the service must let go of every address now (None: it need not)


class Heart:
    def __init__(
        self,
        bus: Bus,
        node: str,
        fence: FenceOps,
        timing: Callable[[], tuple[float, float]],
        on_beat: Callable[[Beat], None],
    ) -> None:
        """``timing`` is called on the heart's thread: it must only read immutable state (the
        service's current cluster spec). ``on_beat`` is called on the loop that ran ``start``."""
        self.bus = bus  # the service's: the heart connects again with its settings
        self.node = node
        self.fence = fence
        self.timing = timing
        self.on_beat = on_beat
        # Owned by the heart's loop; the service reads them only through ``Beat``.
        self.expiry = 0.0
        self.incarnation = 0
        self.missed = 0
        self.generation = 0
        self.leased: list[IPv4Address] = []
        self.vips: list[IPv4Address] = []
        self.hbus: Bus | None = None  # the heart's own connection
        self.loop: asyncio.AbstractEventLoop | None = None
        self._home: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None

    # -- the service's side (its loop) ---------------------------------------------------------
    async def start(self) -> None:
        """Start the thread and connect its bus; returns once the heart can take calls."""
        self._home = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(ready),), name=f"heart-{self.node}", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def beating(self) -> None:
        """Heartbeat until cancelled (cancelling this stops the heartbeats)."""
        await self._call(self._beat_loop())

    async def install(self, vips: Sequence[IPv4Address]) -> None:
        await self._call(self._install(list(vips)))

    async def hold(
        self, leased: Sequence[IPv4Address], vips: Sequence[IPv4Address], generation: int
    ) -> None:
        """Lease exactly ``leased`` (of ``vips``) for what remains of the current lease, as of
        the service's ``generation``."""
        await self._call(self._hold(list(leased), list(vips), generation))

    async def stop(self) -> None:
        loop, thread, stop = self.loop, self._thread, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            await asyncio.to_thread(thread.join)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop is None:
            coro.close()
            raise RuntimeError("the heart is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    # -- the heart's side (its thread and loop) ------------------------------------------------
    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            hbus = await self.bus.again("address-heart")
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self.hbus = hbus
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            self.loop = None
            await hbus.close()

    async def _install(self, vips: list[IPv4Address]) -> None:
        assert self._lock is not None
        async with self._lock:
            self.vips = vips
            await self.fence.install(vips)

    async def _hold(
        self, leased: list[IPv4Address], vips: list[IPv4Address], generation: int
    ) -> None:
        assert self._lock is not None
        async with self._lock:
            # The service had not heard that we let go: what it held then is no longer ours.
            self.leased = leased if generation == self.generation else []
            self.vips = vips
            await self._renew(self.expiry)

    def _drop(self, why: str) -> str:
        self.leased = []
        self.generation += 1
        return why

    async def _beat_loop(self) -> None:
        hbus = self.hbus
        assert self._lock is not None and hbus is not None
        while True:
            stop_if_cancelled()
            heartbeat, lease = self.timing()
            ttl = fence_ttl(heartbeat, lease)
            started = time.monotonic()
            drop: str | None = None
            try:
                # Sent again if the connection moves meanwhile: the fence still counts from
                # ``started``, so an answer to the copy only shortens it.
                reply = await hbus.request_resent(
                    hbus.subjects.heartbeat(self.node),
                    encode(Heartbeat(**hbus.stamp(), node=self.node)),
                    timeout=max(heartbeat, 0.05),
                )
                grant = _GRANT.decode(reply.data)
                if grant.node != self.node:
                    raise ValueError(f"a lease for {grant.node!r} answered our heartbeat")
                async with self._lock:
                    # A lease may only be extended while it still holds: once it lapsed (we
                    # were frozen, or cut off) the cluster may have moved our groups, and even
                    # with our incarnation unchanged the address must go now: while it is on
                    # the interface a supervisor reading stale caches may start the app beside
                    # its replacement (docs/safety.md, "A lapse releases everything").
                    if self.leased and time.monotonic() >= self.expiry:
                        drop = self._drop("lease lapsed")
                    if grant.incarnation != self.incarnation:
                        # Declared lost meanwhile (and rejoined): what we held is no longer
                        # ours, and we take nothing until placement gives it to this one.
                        if self.leased:
                            drop = self._drop(
                                f"membership declared {self.node} lost; now incarnation "
                                f"{grant.incarnation}"
                            )
                        self.incarnation = grant.incarnation
                    # The lease counts from when the heartbeat left, not from now: a slow
                    # answer or a slow nft must shorten the fence, never stretch it.
                    expiry = started + min(ttl, grant.ttl)
                    await self._renew(expiry)
                    self.expiry = expiry
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.missed += 1
                n = self.missed
                log.log(
                    logging.WARNING if n & (n - 1) == 0 else logging.DEBUG,
                    "no lease granted (%s, %d in a row); lease runs out in %.3fs",
                    exc or type(exc).__name__,
                    n,
                    self.expiry - time.monotonic(),
                )
            else:
                self.missed = 0
            if time.monotonic() >= self.expiry and self.leased:
                drop = self._drop("lease lapsed")  # the kernel let go already
            self._tell(
                Beat(
                    self.expiry,
                    self.incarnation,
                    self.missed,
                    self.generation,
                    self.missed == 0,
                    drop,
                )
            )
            await asyncio.sleep(max(0.0, started + heartbeat - time.monotonic()))

    async def _renew(self, expiry: float) -> None:
        """Lease what we hold until ``expiry`` (monotonic); nothing if that is already past.
        The caller holds the lock."""
        before = time.monotonic()
        remaining_ms = int((expiry - before) * 1000)
        leased = self.leased if remaining_ms > 0 else []
        await self.fence.renew(leased, max(remaining_ms, 1), self.vips)
        if leased and time.monotonic() > expiry:
            # We stalled between reading the clock and nft's commit (a freeze, a starved CPU):
            # the kernel got a lease that reaches past ``expiry``. Take it back at once.
            log.error("fence renewal stalled past its own expiry; withdrawing the lease")
            await self.fence.renew([], 1, self.vips)

    def _tell(self, beat: Beat) -> None:
        if self._home is not None:
            with contextlib.suppress(RuntimeError):  # the service's loop is gone: we are stopping
                self._home.call_soon_threadsafe(self.on_beat, beat)
