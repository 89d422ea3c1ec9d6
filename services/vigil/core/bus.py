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
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from vigil.wire.events import AnyEvent, Event

from . import tracing
from .credentials import Credentials, CredentialsError, redact
from .subjects import Subjects

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_URL = "nats://127.0.0.1:4222"
CONNECT_DEADLINE = 10.0  # seconds for a first connection, every server of the list tried
RESEND_POLL = 0.01  # seconds between looks at the reconnect counter while a request waits
# Inbound queues are bounded: a flood is dropped (and counted) at the door rather than queued
# without end in front of the messages that matter. Vigil's events are small and rare.
PENDING_MSGS = 10_000
PENDING_BYTES = 16 * 1024 * 1024
DROP_LOG_EVERY = 1.0  # seconds: at most one log line per subject per second
_DROP_TEXT = 200  # characters of a drop's reason (which may quote the sender) that are logged
_DROP_SUBJECTS = 4096  # distinct subjects counted before the rest share one counter
_DECODER = msgspec.json.Decoder(AnyEvent)
_ENCODER = msgspec.json.Encoder()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def nats_urls(explicit: str | None = None) -> list[str]:
    """``--nats`` beats ``VIGIL_NATS_URL`` beats the local default; commas separate servers."""
    value = explicit or os.environ.get("VIGIL_NATS_URL") or DEFAULT_URL
    return [u.strip() for u in value.split(",") if u.strip()]


class BusError(ConnectionError):
    """Could not connect: the message says why in one line (refused credentials, TLS, no
    server) and never holds a secret."""


class _Client(Client):
    """nats-py upgrades to TLS only when the server's INFO asks for it, so a ``tls://`` URL
    against a plain server (or a forged INFO) would go on in plaintext. This refuses to send
    CONNECT (which may carry credentials) over a connection we wanted encrypted and is not;
    it runs on every reconnect too."""

    tls_wanted = False
    auth_refused = False  # the server said "Authorization Violation" (nats-py then says only
    # "no servers available")

    async def _process_err(self, err_msg: str) -> None:
        if "authorization violation" in err_msg.lower():
            self.auth_refused = True
        await super()._process_err(err_msg)

    def _connect_command(self) -> bytes:
        if self.tls_wanted and not self._server_info.get("tls_required"):
            raise nats_errors.SecureConnRequiredError()
        return super()._connect_command()


_FATAL = (
    ssl.SSLError,
    ssl.CertificateError,
    nats_errors.AuthorizationError,
    nats_errors.SecureConnRequiredError,
)


def explain(exc: BaseException, last: BaseException | None = None) -> str:
    """A connection failure in one line for an operator: authorization says so."""
    for e in (last, exc):
        if isinstance(e, nats_errors.AuthorizationError):
            return "authorization failed: the server refused these credentials (--creds)"
        if isinstance(e, nats_errors.SecureConnRequiredError):
            return "the server does not offer TLS; refusing to connect in plaintext"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed: {e.reason or e}"
        if isinstance(e, CredentialsError):
            return str(e)
    text = str(last or exc) or type(last or exc).__name__
    return redact(text.splitlines()[0] if text else text)[:200]


def replayed(msg: Msg) -> bool:
    """Delivered by a JetStream consumer rather than published on the subject: a client allowed
    to create consumers can aim one's deliveries at any subject, replaying a stored record or
    event there. Core subscribers never read those."""
    return msg.subject.startswith("$") or (msg.reply or "").startswith("$JS.ACK.")


def decode_event(data: bytes, kinds: tuple[type[Event], ...]) -> Event | str:
    """The event in ``data`` if it is one of ``kinds``, else why it is not (to count a drop).
    Pure, and total: no input makes it raise."""
    try:
        event = _DECODER.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        return f"malformed: {exc}"
    if not isinstance(event, kinds):
        return f"unexpected type {type(event).__name__}"
    return event


def now() -> datetime:
    return datetime.now(UTC)


class Bus:
    """A service's connection: publishes events stamped with ``source`` and a sequence number."""

    def __init__(self, nc: Client, subjects: Subjects, source: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=JS_TIMEOUT)
        self.js_quick: JetStreamContext = nc.jetstream(timeout=QUICK_TIMEOUT)
        self.subjects = subjects
        self.source = source
        self.dropped: Counter[str] = Counter()
        self.denied: list[str] = []  # permission violations the server reported, newest last
        self._drop_logged: dict[str, float] = {}
        self._seq = itertools.count(1)
        self._ping: asyncio.Future[None] | None = None
        self._ping_epoch = 0  # the connection's reconnect count when that PING was sent
        self._again: Callable[[str], Awaitable[Bus]] | None = None

    async def again(self, service: str) -> Bus:
        """A second connection like this one (same servers, credentials, TLS, name), for a
        ``service`` whose traffic must not queue behind this one's (the node's heart). It
        belongs to the running loop: connect it on the loop that will use it."""
        if self._again is None:
            raise BusError("this bus was not made by Bus.connect: no settings to connect again")
        return await self._again(service)

    @classmethod
    async def connect(
        cls,
        urls: list[str],
        subjects: Subjects,
        service: str,
        *,
        name: str | None = None,
        persistent: bool = True,
        credentials: Credentials | None = None,
    ) -> Bus:
        """``persistent`` services retry forever (they may start before NATS); a command-line
        client gives up after a couple of seconds with a clear error instead.

        ``credentials`` default to ``VIGIL_CREDS`` / ``VIGIL_TLS_CA`` (none: anonymous, plain).
        Failures raise ``BusError`` with a one-line reason; a permission the server refuses
        later is logged and kept in ``Bus.denied``.
        """
        source = f"{service}@{name or socket.gethostname()}"
        creds = credentials if credentials is not None else Credentials.resolve()
        try:
            options = creds.options(urls)
        except CredentialsError as exc:
            raise BusError(str(exc)) from None
        denied: list[str] = []
        last: list[BaseException] = []
        connecting = True

        holder: list[Bus] = []

        async def on_error(exc: Exception) -> None:
            # A service logs its connection trouble; a command line reports it once, itself.
            if isinstance(exc, nats_errors.SlowConsumerError):
                if holder:  # a full inbound queue: the message is gone, count it as a drop
                    holder[0].drop(exc.subject, "inbound queue full")
                return
            text = explain(exc)
            if "permissions violation" in str(exc).lower():
                denied.append(text)
                log.log(
                    logging.WARNING if persistent else logging.DEBUG, "not authorized: %s", text
                )
                return
            last.append(exc)
            if "authorization violation" in str(exc).lower():
                nc.auth_refused = True
            if connecting and (isinstance(exc, _FATAL) or nc.auth_refused):
                raise exc  # aborts nc.connect: retrying will not fix credentials or TLS
            log.log(logging.WARNING if persistent else logging.DEBUG, "nats: %s", text)

        settings: dict[str, Any] = {  # nats-py types reconnect_time_wait as int; it takes floats
            "servers": urls,
            "name": source,
            "max_reconnect_attempts": -1 if persistent else 2,
            "reconnect_time_wait": 0.2,
            "connect_timeout": 2,
            "error_cb": on_error,
            "ping_interval": 5,
            "max_outstanding_pings": 3,
        }
        nc = _Client()
        nc.tls_wanted = "tls" in options
        try:
            # bounded: nats-py can hang closing a socket whose TLS handshake failed
            async with asyncio.timeout(CONNECT_DEADLINE):
                await nc.connect(**settings, **options)
        except Exception as exc:
            cause = nc.last_error or (last[-1] if last else None)
            if nc.auth_refused:
                cause = nats_errors.AuthorizationError()
            raise BusError(explain(exc, cause)) from None
        connecting = False
        bus = cls(nc, subjects, source)
        bus.denied = denied
        holder.append(bus)

        async def again(other: str) -> Bus:
            return await cls.connect(
                urls,
                subjects,
                other,
                name=name,
                persistent=persistent,
                credentials=creds,
            )

        bus._again = again
        return bus

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

    async def request_resent(self, subject: str, payload: bytes, timeout: float) -> Msg:
        """A request that is sent again, within the same ``timeout``, each time the connection
        moves to another server while it waits for the answer.

        A request in flight to a server that dies is lost with it: waiting out its timeout cost
        a node its lease in chaos seeds 3 and 71. The requests already sent are not cancelled
        (nats-py would leave their entries behind): the first answer wins, the others run out.
        Only for requests that may be answered twice (a heartbeat).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        moves = self.nc.stats["reconnects"]
        sent = [asyncio.ensure_future(self.nc.request(subject, payload, timeout=timeout))]
        failure: BaseException = TimeoutError(f"no answer on {subject} within {timeout}s")
        again: float | None = None  # when to send again (after "no responders")
        try:
            while (left := deadline - loop.time()) > 0:
                if self.nc.stats["reconnects"] != moves and self.nc.is_connected:
                    moves, again = self.nc.stats["reconnects"], loop.time()
                if again is not None and loop.time() >= again and self.nc.is_connected:
                    again = None
                    sent.append(
                        asyncio.ensure_future(self.nc.request(subject, payload, timeout=left))
                    )
                waiting = {t for t in sent if not t.done()}
                if not waiting and again is None:
                    break  # every copy failed, and none is due
                if waiting:
                    await asyncio.wait(
                        waiting, timeout=RESEND_POLL, return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    await asyncio.sleep(RESEND_POLL)  # a copy is due shortly
                for task in [t for t in sent if t.done()]:
                    sent.remove(task)
                    if (error := task.exception()) is None:
                        return task.result()
                    failure = error
                    if isinstance(error, NoRespondersError) and again is None:
                        # just after a reconnect the answerers' interest may not have reached
                        # our new server yet: ask again shortly
                        again = loop.time() + 5 * RESEND_POLL
        finally:
            for task in sent:
                task.add_done_callback(_consume)
        raise failure

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
            if replayed(msg):
                self.drop(msg.subject, "replayed by a JetStream consumer, not published")
                return
            event = decode_event(msg.data, kinds)
            if isinstance(event, str):
                self.drop(msg.subject, event)
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

        await self.nc.subscribe(
            subject,
            cb=on_msg,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )

    def drop(self, subject: str, why: str, count: int = 1) -> None:
        """Count a dropped message and log it, at most once a second per subject, truncated:
        a flood of garbage must not become a flood of log lines."""
        if subject not in self.dropped and len(self.dropped) >= _DROP_SUBJECTS:
            subject = "(other subjects)"
        self.dropped[subject] += count
        now = time.monotonic()
        last = self._drop_logged.get(subject)
        if last is not None and now - last < DROP_LOG_EVERY:
            return
        if len(self._drop_logged) >= _DROP_SUBJECTS:
            self._drop_logged.clear()
        self._drop_logged[subject] = now
        text = why if len(why) <= _DROP_TEXT else why[:_DROP_TEXT] + "..."
        log.warning(
            "dropped message on %s (%d so far): %s",
            subject[:_DROP_TEXT],
            self.dropped[subject],
            text.encode("unicode_escape").decode("ascii"),
        )

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already disconnected: nothing left to drain
                await self.nc.close()


# Byte limits on what the bus stores, so a flood cannot fill the servers' disks. Buckets have
# no age limit: their records are the cluster's state, not history.
# A full bucket refuses new writes (KV discards new), so the bound is generous: it stops a
# flood of keys from filling the disk long before Vigil's own state could reach it (10,000
# groups take under 10 MB a bucket). JetStream reserves each stream's limit against the server's
# store (75% of the free disk by default): at 1 GiB a bucket a cluster reserved 6.3 GB, and
# servers on small volumes refused to create the buckets ("insufficient storage resources").
BUCKET_BYTES = 128 * 1024 * 1024
MAX_EVENT = 64 * 1024  # events are a few hundred bytes; larger is garbage, refused by the stream
STREAM_BYTES = 256 * 1024 * 1024  # with max_age (7 days): the oldest history goes first


def replicas() -> int:
    """How many copies JetStream keeps of Vigil's buckets and history: 1 on the embedded server,
    3 on a 3-server cluster (``VIGIL_REPLICAS=3``, set by the compose and k8s deployments)."""
    return int(os.environ.get("VIGIL_REPLICAS", "1"))


# A JetStream request unanswered for this long is a stream without a leader (nats-server elects
# a new one 4-9 s after the old one died): failing sooner than the client's 5 s default lets the
# caller's retry land soon after the election instead of up to 5 s later.
JS_TIMEOUT = 2.0
# Opening a bucket and reading for the operator: one round trip, answered in milliseconds when
# there is a leader (or any replica, for a direct get); retried, not waited on.
QUICK_TIMEOUT = 1.0
KV_OPEN_DEADLINE = 120.0  # seconds a service keeps trying to open a bucket before it gives up


async def kv(bus: Bus, bucket: str, *, history: int = 1, copies: int | None = None) -> KeyValue:
    """Open a bucket, creating it when missing (every service may be first to start) with
    ``copies`` copies (default: ``replicas()``).

    A JetStream cluster that is still electing its leaders (all servers restarted on existing
    data, as after ``docker compose down`` and ``up``) answers with a timeout or "unavailable"
    for a while: retried, with a growing pause, like a missing bucket is created."""
    return await until_elected(
        lambda: _open_kv(bus, bucket, history, copies), f"bucket {bucket}", bus
    )


# What a JetStream cluster answers while it is still electing a stream's leader.
ELECTING = (nats_errors.TimeoutError, ServiceUnavailableError, NoRespondersError)
# JetStream's error code for "no suitable peers for placement": too few servers are up to place
# a new stream's replicas (a cluster still forming, or a server down).
NO_PEERS = 10005


class NotPlaceable(Exception):
    """A stream could not be created yet for want of servers: retried like an election (a
    service started beside a just-formed cluster failed at once: CI)."""


def _unless_placeable(exc: BaseException) -> None:
    if isinstance(exc, APIError) and exc.err_code == NO_PEERS:
        raise NotPlaceable(str(exc)) from exc


async def until_elected(call: Callable[[], Awaitable[T]], what: str, bus: Bus) -> T:
    """``call()``, retried with a growing pause while the cluster is still electing leaders
    (after its servers started or one died), for up to ``KV_OPEN_DEADLINE``.

    A request the server refuses for permissions also ends in a timeout (the refusal comes
    apart, as an error on the connection): that is final, not retried."""
    deadline = asyncio.get_running_loop().time() + KV_OPEN_DEADLINE
    refused = len(bus.denied)
    pause = 0.2
    while True:
        try:
            return await call()
        except (*ELECTING, NoStreamResponseError, NotPlaceable) as exc:
            if len(bus.denied) > refused or asyncio.get_running_loop().time() + pause > deadline:
                raise
            log.warning("%s not available yet (%r); retrying in %.1fs", what, exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)  # an election ends at once for everyone: ask again soon


async def _open_kv(bus: Bus, bucket: str, history: int, copies: int | None) -> KeyValue:
    try:
        await bus.js_quick.key_value(bucket)  # it exists (and has a leader): one quick round trip
    except (BucketNotFoundError, NotFoundError):
        try:
            await bus.js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=history,
                    storage=StorageType.FILE,
                    replicas=copies or replicas(),
                    max_value_size=bus.nc.max_payload,  # the largest message it could take
                    max_bytes=BUCKET_BYTES,
                    direct=True,  # any replica answers a reader's get: see replica_reader
                )
            )
        except Exception as exc:
            try:
                await bus.js_quick.key_value(bucket)  # lost a creation race: use the winner's
            except (BucketNotFoundError, NotFoundError):
                _unless_placeable(exc)  # too few servers up yet: retried
                raise
    # A service reads from the stream's leader (never behind its own writes), even where the
    # bucket allows direct gets from any replica.
    return _handle(bus, bucket, direct=False)


def _handle(bus: Bus, bucket: str, direct: bool) -> KeyValue:
    return KeyValue(
        name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=bus.js, direct=direct
    )


def replica_reader(bus: Bus, bucket: str, direct: bool = True) -> KeyValue:
    """A handle for an operator's reads (``vigil status``) answered by any replica of the
    bucket, so they work while JetStream elects a new leader after a server died. A replica may
    lag its leader by the last few writes: fine for a view, never for a decision. Opening it
    costs no round trip (stream info needs the leader). Its gets fail with no responders while
    the connection moves to another server, and always for a bucket created before direct gets
    were allowed: ``direct=False`` gives the same handle reading the leader."""
    return KeyValue(
        name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=bus.js_quick, direct=direct
    )


async def ensure_stream(bus: Bus, copies: int | None = None) -> None:
    """The event history for ``vigil events --since``: every event under ``<root>.>``."""
    config = StreamConfig(
        name=bus.subjects.stream,
        subjects=[bus.subjects.all_events],
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600,
        max_msgs=1_000_000,
        max_bytes=STREAM_BYTES,
        max_msg_size=MAX_EVENT,
        num_replicas=copies or replicas(),
    )

    async def create() -> None:
        try:
            await bus.js.add_stream(config)
        except ServiceUnavailableError:
            raise  # JetStream not ready yet: retried below
        except APIError as exc:  # exists with another config: keep it
            _unless_placeable(exc)  # too few servers up yet: retried
            log.debug("stream %s: %s", config.name, exc)

    # While the servers still elect their meta leader (a cluster just started, as by `vigil
    # up`) the creation times out: retried like a bucket's, or the history was never created.
    try:
        await until_elected(create, f"stream {config.name}", bus)
    except Exception as exc:  # history is not critical: the service runs without it
        log.info("stream %s not created: %s", config.name, exc)


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


async def compare_and_set(
    bucket: KeyValue, key: str, record: msgspec.Struct, last: int | None
) -> int:
    """Write ``record`` under ``key`` only if the key's revision is still ``last`` (None: only
    if there is no such key); the new revision. Raises ``KeyWrongLastSequenceError`` if not."""
    if last is None:
        return await bucket.create(key, encode(record))
    return await bucket.update(key, encode(record), last=last)
