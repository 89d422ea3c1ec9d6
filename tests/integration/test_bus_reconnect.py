"""After a NATS restart a service is back in contact at once: a PING lost with the old
connection does not hold ``round_trip`` (and with it the supervisor's self-fence) for a minute,
and the live copies of the buckets follow changes again within moments, not after nats-py
notices its dead watch (the app that started 9-16 s late after a NATS restart)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import nats
from nats.aio.msg import Msg

from vigil.core import embedded
from vigil.core.bus import Bus, encode, kv
from vigil.core.kvcache import KVCache
from vigil.core.subjects import Subjects
from vigil.testing.server import NatsCluster
from vigil.wire.records import Intent

from .conftest import DEADLINE


async def test_round_trip_answers_soon_after_the_server_comes_back(tmp_path: Path) -> None:
    port = embedded.free_port()
    proc, url = embedded.start(tmp_path, port=port)
    procs = [proc]
    bus = await Bus.connect([url], Subjects("rt"), "supervisor", name="n1")
    try:
        assert await bus.round_trip(1.0)
        proc.terminate()
        proc.wait(timeout=10)
        assert not await bus.round_trip(0.2)  # a PING left outstanding on the dead connection
        proc, _ = embedded.start(tmp_path, port=port)
        procs.append(proc)
        async with asyncio.timeout(DEADLINE):
            while not await bus.round_trip(0.2):
                pass
    finally:
        await bus.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


async def test_a_cache_sees_changes_soon_after_the_server_comes_back(tmp_path: Path) -> None:
    port = embedded.free_port()
    proc, url = embedded.start(tmp_path, port=port)
    procs = [proc]
    bus = await Bus.connect([url], Subjects("kv"), "placement", name="p1")
    try:
        bucket = await kv(bus, "kv_cache_test")
        await bucket.put("gone", encode(Intent("gone")))
        changed = asyncio.Event()
        cache = KVCache(bucket, Intent, connection=bus.nc, on_change=lambda _: changed.set())
        task = asyncio.create_task(cache.run())
        await asyncio.wait_for(cache.ready.wait(), DEADLINE)
        assert cache.get("gone") == Intent("gone")

        proc.terminate()
        proc.wait(timeout=10)
        proc, _ = embedded.start(tmp_path, port=port)
        procs.append(proc)
        async with asyncio.timeout(DEADLINE):
            while not await bus.round_trip(0.2):
                pass
        await bucket.delete("gone")
        await bucket.put("g1", encode(Intent("g1", admin="halted")))
        # Within nats-py's own detection of a dead watch (missed idle heartbeats, 10 s+).
        async with asyncio.timeout(6.0):
            while True:
                changed.clear()
                if cache.get("g1") is not None and cache.get("gone") is None:
                    break
                await changed.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await bus.close()
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


async def test_a_request_lost_with_its_server_is_sent_again_on_the_next(tmp_path: Path) -> None:
    """The heartbeat of chaos seeds 3 and 71: in flight to a server that died, it was lost, and
    the node waited out its timeout (and its lease). Sent again on the new connection, it is
    answered well within the same timeout."""
    with NatsCluster(tmp_path) as cluster:
        bus = await Bus.connect(cluster.urls, Subjects("rs"), "address-heart", name="n1")
        ours = cluster.urls.index(str(bus.nc.connected_url.geturl()))  # type: ignore[union-attr]
        other = cluster.urls[(ours + 1) % len(cluster.urls)]
        answerer = await nats.connect([other], name="answerer")
        seen: list[bytes] = []
        first = asyncio.Event()

        async def answer(msg: Msg) -> None:
            seen.append(msg.data)
            if len(seen) == 1:
                first.set()  # as if lost with the dying server: no answer
            else:
                await msg.respond(b"granted")

        async def pong(msg: Msg) -> None:
            await msg.respond(b"pong")

        try:
            await answerer.subscribe("rs.ask", cb=answer)
            await answerer.subscribe("rs.ping", cb=pong)
            # Interest crosses the cluster's routes a moment after the subscription: until a
            # ping from our server is answered, a request there finds no responders.
            async with asyncio.timeout(DEADLINE):
                while True:
                    with contextlib.suppress(nats.errors.NoRespondersError, TimeoutError):
                        await bus.nc.request("rs.ping", b"", timeout=0.5)
                        break
                    await asyncio.sleep(0.05)
            request = asyncio.create_task(bus.request_resent("rs.ask", b"beat", timeout=30.0))
            async with asyncio.timeout(DEADLINE):
                await first.wait()
            cluster.kill(cluster.names[ours])
            async with asyncio.timeout(DEADLINE):  # well inside the request's own 30 s
                reply = await request
            assert reply.data == b"granted"
            assert seen == [b"beat", b"beat"]
        finally:
            await answerer.close()
            await bus.close()
