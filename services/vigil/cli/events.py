"""``vigil events``: the event history from the JetStream stream, and optionally live."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from vigil.wire.events import AnyEvent, Event

from ..core.bus import Bus

_DECODE = msgspec.json.Decoder(AnyEvent)
_ENVELOPE = {"type", "source", "seq", "ts"}


def render(event: Event) -> str:
    """One readable line: time, source, type, then the event's own fields."""
    fields = msgspec.structs.asdict(event)
    detail = " ".join(
        f"{k}={v}" for k, v in fields.items() if k not in _ENVELOPE and v not in (None, "", [], {})
    )
    tag = type(event).__struct_config__.tag
    ts = event.ts.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"{ts}  {event.source:<22} {tag!s:<18} {detail}"


async def show(
    bus: Bus, since: timedelta | None, follow: bool, as_json: bool, out: TextIO = sys.stdout
) -> int:
    """Print the history (since ``since`` ago, or all of it); returns how many events."""
    stream = bus.subjects.stream
    try:
        info = await bus.js.stream_info(stream)
    except Exception:
        out.write(f"(no event history yet: stream {stream} does not exist)\n")
        return 0
    if info.state.messages == 0 and not follow:
        return 0
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=(datetime.now(UTC) - since) if since else None,
    )
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        try:
            event = _DECODE.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            line = msg.data.decode(errors="replace")
        else:
            line = msg.data.decode() if as_json else render(event)
        out.write(line + "\n")
        out.flush()
        count += 1
        if not follow and msg.metadata.num_pending == 0:
            done.set()

    sub = await bus.js.subscribe(
        bus.subjects.all_events, stream=stream, cb=on_msg, ordered_consumer=True, config=config
    )
    try:
        if follow:
            await asyncio.Event().wait()
        else:
            with contextlib.suppress(TimeoutError):  # nothing (more) inside the window
                await asyncio.wait_for(done.wait(), 5)
    finally:
        await sub.unsubscribe()
    return count
