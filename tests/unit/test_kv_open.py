"""Opening a bucket waits out a JetStream cluster that is still electing its leaders (all servers
restarted on existing data, e.g. `docker compose down` then `up`) instead of crashing."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.js.errors import ServiceUnavailableError

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
