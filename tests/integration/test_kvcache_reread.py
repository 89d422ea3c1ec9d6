"""A cache's re-read is never older than the cache: the read may race the write it was
prompted by (an event goes out before its record is written)."""

from __future__ import annotations

from vigil.core.bus import Bus, encode, kv
from vigil.core.kvcache import KVCache
from vigil.core.subjects import Subjects
from vigil.wire.records import AddressStatus

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
