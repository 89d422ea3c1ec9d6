"""The bus: one NATS connection per service, typed publish, and subscriptions that drop bad input.

A message that does not decode, or is stale, is counted, logged with its subject and dropped; it
never reaches a handler and never crashes a service.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from vigil.wire.events import AnyEvent, Event

from . import tracing
from .subjects import Subjects

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"
_DECODER = msgspec.json.Decoder(AnyEvent)
_ENCODER = msgspec.json.Encoder()


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def nats_urls(explicit: str | None = None) -> list[str]:
    """``--nats`` beats ``VIGIL_NATS_URL`` beats the local default; commas separate servers."""
    value = explicit or os.environ.get("VIGIL_NATS_URL") or DEFAULT_URL
    return [u.strip() for u in value.split(",") if u.strip()]


def now() -> datetime:
    return datetime.now(UTC)


class Bus:
    """A service's connection: publishes events stamped with ``source`` and a sequence number."""

    def __init__(self, nc: Client, subjects: Subjects, source: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.source = source
        self.dropped: Counter[str] = Counter()
        self._seq = itertools.count(1)
        self._ping: asyncio.Future[None] | None = None
        self._ping_epoch = 0  # the connection's reconnect count when that PING was sent

    @classmethod
    async def connect(
        cls,
        urls: list[str],
        subjects: Subjects,
        service: str,
        *,
        name: str | None = None,
        persistent: bool = True,
    ) -> Bus:
        """``persistent`` services retry forever (they may start before NATS); a command-line
        client gives up after a couple of seconds with a clear error instead."""
        source = f"{service}@{name or socket.gethostname()}"

        async def on_error(exc: Exception) -> None:
            # A service logs its connection trouble; a command line reports it once, itself.
            log.log(logging.WARNING if persistent else logging.DEBUG, "nats: %s", exc)

        nc = await nats.connect(
            servers=urls,
            name=source,
            max_reconnect_attempts=-1 if persistent else 2,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            error_cb=on_error,
            ping_interval=5,
            max_outstanding_pings=3,
        )
        return cls(nc, subjects, source)

    async def round_trip(self, within: float) -> bool:
        """True when the server answered a PING within ``within`` seconds: everything we
        published before has reached it.

        The PING is never cancelled: nats-py leaves a cancelled flush's future in its queue and
        its reader then fails on the late PONG. A slow PING is left to finish, and no second one
        is sent while it is out.
        """
        reconnects = self.nc.stats["reconnects"]
        if self._ping is not None and not self._ping.done() and reconnects != self._ping_epoch:
            # A reconnect emptied nats-py's PONG queue: that PING will never be answered (it
            # would time out after a minute). Forget it, safely: it is no longer in the queue.
            self._ping.add_done_callback(_consume)
            self._ping = None
        if self._ping is None or self._ping.done():
            if self._ping is not None and not self._ping.cancelled():
                self._ping.exception()  # consume it: a failed PING is simply "no"
            self._ping = asyncio.ensure_future(self.nc.flush(timeout=60))
            self._ping_epoch = reconnects
        done, _ = await asyncio.wait({self._ping}, timeout=within)
        return bool(done) and not self._ping.cancelled() and self._ping.exception() is None

    def stamp(self) -> dict[str, Any]:
        """The envelope fields of the next event from this source."""
        return {"source": self.source, "seq": next(self._seq), "ts": now()}

    async def publish(self, subject: str, event: Event) -> None:
        await self.nc.publish(subject, _ENCODER.encode(event), headers=tracing.headers())

    async def subscribe(
        self,
        subject: str,
        kind: type[Event] | tuple[type[Event], ...],
        handler: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Deliver decoded events of ``kind`` to ``handler``; count and drop everything else."""
        kinds = kind if isinstance(kind, tuple) else (kind,)

        async def on_msg(msg: Msg) -> None:
            try:
                event = _DECODER.decode(msg.data)
            except msgspec.DecodeError as exc:
                self.drop(msg.subject, f"malformed: {exc}")
                return
            if not isinstance(event, kinds):
                self.drop(msg.subject, f"unexpected type {type(event).__name__}")
                return
            try:
                tag = str(type(event).__struct_config__.tag)
                with tracing.span(
                    f"on {tag}",
                    tracing.context_of(msg.headers),
                    subject=msg.subject,
                    source=event.source,
                ):
                    await handler(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler for %s failed; the next reconcile repairs it", msg.subject)

        await self.nc.subscribe(subject, cb=on_msg)

    def drop(self, subject: str, why: str) -> None:
        self.dropped[subject] += 1
        log.warning("dropped message on %s (%d so far): %s", subject, self.dropped[subject], why)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already disconnected: nothing left to drain
                await self.nc.close()


def replicas() -> int:
    """How many copies JetStream keeps of Vigil's buckets and history: 1 on the embedded server,
    3 on a 3-server cluster (``VIGIL_REPLICAS=3``, set by the compose and k8s deployments)."""
    return int(os.environ.get("VIGIL_REPLICAS", "1"))


async def kv(bus: Bus, bucket: str, *, history: int = 1) -> KeyValue:
    """Open a bucket, creating it when missing (every service may be first to start)."""
    try:
        return await bus.js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        try:
            return await bus.js.create_key_value(
                KeyValueConfig(
                    bucket=bucket, history=history, storage=StorageType.FILE, replicas=replicas()
                )
            )
        except Exception:
            return await bus.js.key_value(bucket)  # lost a creation race: use the winner's


async def ensure_stream(bus: Bus) -> None:
    """The event history for ``vigil events --since``: every event under ``<root>.>``."""
    config = StreamConfig(
        name=bus.subjects.stream,
        subjects=[bus.subjects.all_events],
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600,
        max_msgs=1_000_000,
        num_replicas=replicas(),
    )
    try:
        await bus.js.add_stream(config)
    except Exception as exc:  # exists with another config: keep it, history is not critical
        log.debug("stream %s: %s", config.name, exc)


async def get_record(bucket: KeyValue, key: str, kind: type[T]) -> T | None:
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:  # deleted and purged keys too (KeyDeletedError is a subclass)
        return None
    if not entry.value:
        return None
    try:
        return msgspec.json.decode(entry.value, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("bucket %s key %s holds an unreadable record; ignored", bucket._name, key)
        return None


async def all_records(bucket: KeyValue, kind: type[T], prefix: str = "") -> dict[str, T]:
    """Every live record of a bucket (whose key starts with ``prefix``), decoded; unreadable
    ones are logged and skipped.

    Keys are listed from the bucket's stream info rather than ``KeyValue.keys()``: that one is a
    watch whose consumer outlives the call for minutes, and a busy ``vigil status`` would fill the
    server's consumer limit. Failures propagate: "could not read" is not "empty".
    """
    assert prefix == "" or prefix.endswith("."), "prefixes end at a token boundary"
    name = bucket._name  # nats-py keeps these private; the stream layout is the KV spec's
    info = await bucket._js.stream_info(bucket._stream, subjects_filter=f"$KV.{name}.{prefix}>")
    out: dict[str, T] = {}
    head = f"$KV.{name}."
    for subject in sorted(info.state.subjects or {}):
        key = subject[len(head) :]
        record = await get_record(bucket, key, kind)
        if record is not None:
            out[key] = record
    return out


def encode(record: msgspec.Struct) -> bytes:
    return _ENCODER.encode(record)
