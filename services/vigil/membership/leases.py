"""Node leases, pure: a node's stored record and the clock in, the next record out.

    (none) --grant--> up (incarnation 1) --no grant for a lease--> lost --grant--> up (2)

Every grant and every loss declaration is a compare-and-set on the node's record, so replicas
agree: a replica declares a node lost only on the record it read, and only once the last grant
written there (``granted_until``, the end of the node's fence) is ``lease - fence`` in the past;
a grant written meanwhile by another replica makes the declaration's compare-and-set fail.

Times are wall-clock datetimes (records are shared between machines) passed in by the caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from vigil.wire.records import NodeRecord


def grant(record: NodeRecord | None, node: str, now: datetime, fence: float) -> NodeRecord:
    """The record after granting ``node`` a lease of ``fence`` seconds from ``now``. A node
    that is new, or was declared lost, (re)joins with the next incarnation."""
    until = now + timedelta(seconds=fence)
    if record is None or record.state != "up":
        incarnation = (record.incarnation if record else 0) + 1
        return NodeRecord(node, "up", now, granted_until=until, incarnation=incarnation)
    return msgspec.structs.replace(record, granted_until=until)


def joined(before: NodeRecord | None, after: NodeRecord) -> bool:
    return after.state == "up" and (before is None or before.state != "up")


def silent_for(record: NodeRecord, now: datetime, fence: float) -> float:
    """Seconds since the node's last grant (its last heartbeat answered)."""
    until = record.granted_until or record.since + timedelta(seconds=fence)
    return (now - until).total_seconds() + fence


def expired(record: NodeRecord, now: datetime, lease: float, fence: float) -> bool:
    """Up, and not granted for longer than a lease: its fence lapsed ``lease - fence`` ago."""
    return record.state == "up" and silent_for(record, now, fence) > lease


def declare_lost(record: NodeRecord, now: datetime) -> NodeRecord:
    return msgspec.structs.replace(record, state="lost", since=now)
