"""A cache's re-read is never older than the cache: the read may race the write it was
prompted by (an event goes out before its record is written)."""

from __future__ import annotations

import asyncio

from vigil.core.bus import Bus, encode, kv
from vigil.core.kvcache import KVCache
from vigil.core.subjects import Subjects
from vigil.wire.records import AddressStatus

from .conftest import DEADLINE

HELD = AddressStatus("web1", "n1", "10.213.77.1/24", True, 1)


async def test_a_reread_that_finds_nothing_keeps_what_the_watch_delivered(
    nats_url: str, subjects: Subjects
) -> None:
    """The supervisor started web1 on the watch's record, then its event handler's read (sent
    before the record was written) found no key and dropped it: web1 was halted 20 ms after
    it started and never started again (the lab said 'offline')."""
    bus = await Bus.connect([nats_url], subjects, "test", name="t", persistent=False)
    try:
        bucket = await kv(bus, subjects.bucket_observed)
        cache = KVCache(bucket, AddressStatus)
        cache.note("address.n1.web1", 5, HELD)  # what the watch delivered
        assert await cache.reread("address.n1.web1") == HELD
        assert cache.get("address.n1.web1") == HELD

        revision = await bucket.put("address.n1.web2", encode(HELD))
        await bucket.delete("address.n1.web2")  # a deletion newer than the cache: forgotten
        cache.note("address.n1.web2", revision, HELD)
        assert await cache.reread("address.n1.web2") is None
        assert cache.get("address.n1.web2") is None

        newer = AddressStatus("web1", "n1", "10.213.77.1/24", False, 2)
        await bucket.put("address.n1.web3", encode(newer))
        cache.note("address.n1.web3", 10_000, HELD)  # the cache is newer than the bucket
        assert await cache.reread("address.n1.web3") == HELD
    finally:
        await bus.close()


async def test_a_restarted_watch_leaves_no_consumer_behind(
    nats_url: str, subjects: Subjects
) -> None:
    """Every reconnect and every server death restarts a watch. nats-py leaves the old watch's
    consumer on the server for 5 minutes; a long chaos run piled up 2,500 of them until the
    server refused one more ('maximum consumers limit reached') and the caches went stale for
    good. A stopped watch deletes its consumer (and one left on a dead server goes in 10 s)."""
    bus = await Bus.connect([nats_url], subjects, "test", name="t", persistent=False)
    try:
        bucket = await kv(bus, subjects.bucket_observed)
        stream = f"KV_{subjects.bucket_observed}"
        cache = KVCache(bucket, AddressStatus)
        task = asyncio.create_task(cache.run())
        try:
            for _ in range(5):
                async with asyncio.timeout(DEADLINE):
                    await cache.ready.wait()
                watcher = cache.watcher
                assert watcher is not None
                cache.ready.clear()
                await watcher.stop()  # type: ignore[no-untyped-call]  # as a reconnect does
                async with asyncio.timeout(DEADLINE):
                    while cache.watcher is watcher:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
            async with asyncio.timeout(DEADLINE):
                await cache.ready.wait()
            info = await bus.js.stream_info(stream)
            assert info.state.consumer_count == 1  # the live watch's, and no other
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await bus.close()
