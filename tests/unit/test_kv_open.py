"""Opening a bucket waits out a JetStream cluster that is still electing its leaders (all servers
restarted on existing data, e.g. `docker compose down` then `up`) instead of crashing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest
from nats.js.errors import BadRequestError, BucketNotFoundError, ServiceUnavailableError

from vigil.core import bus as bus_mod


class FlakyJetStream:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def key_value(self, bucket: str) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return f"bucket {bucket}"


class FakeBus:
    def __init__(self, js: FlakyJetStream) -> None:
        self.js = self.js_quick = js
        self.denied: list[str] = []  # permission violations the server reported
        self.nc = SimpleNamespace(max_payload=1 << 20)


async def test_kv_retries_timeouts_and_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(bus_mod.asyncio, "sleep", no_sleep)
    js = FlakyJetStream(
        [nats.errors.TimeoutError(), ServiceUnavailableError(), nats.errors.TimeoutError()]
    )
    fake: Any = FakeBus(js)
    handle = await bus_mod.kv(fake, "vigil_nodes")
    assert (handle._name, handle._direct) == ("vigil_nodes", False)  # a service reads the leader
    assert js.calls == 4


async def test_kv_gives_up_after_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(bus_mod.asyncio, "sleep", no_sleep)
    monkeypatch.setattr(bus_mod, "KV_OPEN_DEADLINE", 0.0)
    fake: Any = FakeBus(FlakyJetStream([nats.errors.TimeoutError()]))
    with pytest.raises(nats.errors.TimeoutError):
        await bus_mod.kv(fake, "vigil_nodes")


class UnplaceableJetStream(FlakyJetStream):
    """No bucket yet, and its creation refused ``refusals`` times with ``error``."""

    def __init__(self, refusals: int, error: Exception) -> None:
        super().__init__([])
        self.refusals, self.error, self.created = refusals, error, False

    async def key_value(self, bucket: str) -> str:
        self.calls += 1
        if not self.created:
            raise BucketNotFoundError()
        return f"bucket {bucket}"

    async def create_key_value(self, config: Any) -> None:
        if self.refusals:
            self.refusals -= 1
            raise self.error
        self.created = True


def no_peers() -> BadRequestError:
    return BadRequestError(
        code=400, err_code=bus_mod.NO_PEERS, description="no suitable peers for placement"
    )


async def test_a_bucket_refused_for_want_of_servers_is_created_once_they_are_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cluster still forming (or with a server down) refuses a new three-copy stream with "no
    suitable peers for placement": retried like an election, not a failure (a CI run's test
    failed at once on it, and `ensure_stream` took it for "exists" and never made the history)."""

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(bus_mod.asyncio, "sleep", no_sleep)
    js = UnplaceableJetStream(2, no_peers())
    fake: Any = FakeBus(js)
    handle = await bus_mod.kv(fake, "vigil_nodes")
    assert handle._name == "vigil_nodes" and js.created


async def test_a_bucket_refused_for_another_reason_is_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(bus_mod.asyncio, "sleep", no_sleep)
    refused = BadRequestError(code=400, err_code=10052, description="replicas > 5 not supported")
    fake: Any = FakeBus(UnplaceableJetStream(1, refused))
    with pytest.raises(BucketNotFoundError):
        await bus_mod.kv(fake, "vigil_nodes")
