"""Operator intents: halt, run, offline, switchover. The CLI writes them to the ``intents``
bucket (compare-and-set) and announces them; placement and the supervisors act on them."""

from __future__ import annotations

import getpass

import msgspec

from vigil.wire.events import IntentChanged
from vigil.wire.records import Admin, Intent, NodeRecord, Placement

from ..core.bus import Bus, compare_and_set, get_record, kv
from ..core.clusterconfig import ConfigSource
from ..placement.rules import next_node


class IntentError(ValueError):
    """The request makes no sense for this cluster; nothing was changed."""


async def _current(bus: Bus, group: str) -> tuple[Intent, int | None]:
    bucket = await kv(bus, bus.subjects.bucket_intents)
    try:
        entry = await bucket.get(group)
    except Exception:
        return Intent(group), None
    if not entry.value:
        return Intent(group), entry.revision
    try:
        return msgspec.json.decode(entry.value, type=Intent), entry.revision
    except msgspec.DecodeError:  # unreadable (not ours, or garbage): the operator's intent wins
        return Intent(group), entry.revision


async def _write(bus: Bus, intent: Intent, revision: int | None) -> None:
    bucket = await kv(bus, bus.subjects.bucket_intents)
    await compare_and_set(bucket, intent.group, intent, revision)
    await bus.publish(
        bus.subjects.intent(intent.group),
        IntentChanged(
            **bus.stamp(),
            group=intent.group,
            admin=intent.admin,
            switchover_to=intent.switchover_to,
            user=getpass.getuser(),
        ),
    )


async def _group(bus: Bus, name: str) -> tuple[list[str], Placement | None]:
    source = ConfigSource(bus)
    await source.refresh()
    group = source.spec.group(name) if source.spec else None
    if group is None:
        raise IntentError(f"unknown group {name!r}")
    placement = await get_record(await kv(bus, bus.subjects.bucket_placement), name, Placement)
    return group.sequence, placement


async def set_admin(bus: Bus, name: str, admin: Admin) -> Intent:
    await _group(bus, name)
    for _ in range(5):
        intent, revision = await _current(bus, name)
        new = msgspec.structs.replace(intent, admin=admin)
        try:
            await _write(bus, new, revision)
        except Exception:
            continue  # someone else changed it meanwhile: read again
        return new
    raise IntentError(f"group {name!r}: the intent kept changing under us; try again")


async def switchover(bus: Bus, name: str, to: str | None) -> tuple[str, str]:
    """Ask for a planned move; returns (from, to). Refused unless the group runs and the
    target is up and in its list."""
    sequence, placement = await _group(bus, name)
    if placement is None or placement.node is None:
        raise IntentError(f"group {name!r} runs nowhere: use 'vigil run {name}'")
    nodes = await kv(bus, bus.subjects.bucket_nodes)
    up = set()
    for node in sequence:
        record = await get_record(nodes, node, NodeRecord)
        if record is not None and record.state == "up":
            up.add(node)
    if to is None:
        to = next_node(sequence, placement.node, lambda n: n in up and n != placement.node)
        if to is None:
            raise IntentError(f"group {name!r}: no other live node in its list")
    elif to not in sequence:
        raise IntentError(f"group {name!r}: node {to!r} is not in its list {sequence}")
    elif to == placement.node:
        raise IntentError(f"group {name!r} already runs on {to}")
    elif to not in up:
        raise IntentError(f"group {name!r}: node {to!r} is not up")
    for _ in range(5):
        intent, revision = await _current(bus, name)
        new = msgspec.structs.replace(
            intent,
            switchover_to=to,
            switchover_id=max(intent.switchover_id, placement.switchover_id) + 1,
        )
        try:
            await _write(bus, new, revision)
        except Exception:
            continue
        return placement.node, to
    raise IntentError(f"group {name!r}: the intent kept changing under us; try again")


async def enable(bus: Bus, name: str) -> None:
    """Re-enable switching for a group and forget where it failed (``vigil enable``)."""
    _, placement = await _group(bus, name)
    applied = placement.enable_id if placement else 0
    for _ in range(5):
        intent, revision = await _current(bus, name)
        new = msgspec.structs.replace(intent, enable_id=max(intent.enable_id, applied) + 1)
        try:
            await _write(bus, new, revision)
        except Exception:
            continue
        return
    raise IntentError(f"group {name!r}: the intent kept changing under us; try again")
