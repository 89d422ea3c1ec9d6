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

from vigil.wire.records import LeaseRecord, NodeRecord


def grant(
    record: NodeRecord | None, node: str, now: datetime, fence: float, above: int = 0
) -> NodeRecord:
    """The record after granting ``node`` a lease of ``fence`` seconds from ``now``. A node
    that is new, or was declared lost, (re)joins with the next incarnation, above ``above``
    too (the one ``leases`` holds: a ``nodes`` record rewritten after it was unreadable, or
    deleted, must not start an incarnation ``leases`` would take for an old one)."""
    until = now + timedelta(seconds=fence)
    if record is None or record.state != "up":
        incarnation = max(record.incarnation if record else 0, above) + 1
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


# -- the second bucket (``leases``) ----------------------------------------------------------
# A lease is granted in ``nodes`` or in ``leases``, whichever answers first, so that one
# bucket's leader election does not let every fence lapse. ``nodes`` alone starts an
# incarnation; ``leases`` only extends one, which it "adopts" after a grant in ``nodes``. A loss
# is declared by (re)writing the incarnation revoked in ``leases``, then marking it lost in
# ``nodes``, each a compare-and-set on a record whose last grant had lapsed. An adoption is a
# compare-and-set on the ``leases`` record read *before* its ``nodes`` grant was stored: a
# declaration read that grant, so its revocation came later and makes the adoption fail.


def extend(
    record: LeaseRecord | None, node: NodeRecord | None, now: datetime, fence: float
) -> LeaseRecord | None:
    """The lease record after a grant of ``fence`` seconds from ``now``; None when this bucket
    may not grant (no incarnation adopted yet, revoked, or not the one ``node``, our copy of
    the ``nodes`` record, holds up)."""
    if record is None or node is None or not holds(record, node) or node.state != "up":
        return None
    return msgspec.structs.replace(record, granted_until=now + timedelta(seconds=fence))


def adopt(record: LeaseRecord | None, node: NodeRecord) -> LeaseRecord | None:
    """The lease record that lets ``leases`` grant the incarnation ``node`` (a grant just
    stored in ``nodes``) holds, or None when ``record`` (read before that grant) has it already.
    A revoked record is taken back too: the grant in ``nodes`` proves the node was not declared
    lost, and the compare-and-set on ``record`` fails if a declaration revoked it since."""
    if node.state != "up" or node.granted_until is None:
        return None
    if record is not None and (
        record.incarnation > node.incarnation
        or (record.incarnation == node.incarnation and not record.revoked)
    ):
        return None
    return LeaseRecord(node.name, node.incarnation, node.granted_until)


def holds(record: LeaseRecord | None, node: NodeRecord) -> bool:
    """Can ``record`` extend ``node``'s fence (same incarnation, not revoked)?"""
    return record is not None and not record.revoked and record.incarnation == node.incarnation


def lease_expired(record: LeaseRecord, now: datetime, lease: float, fence: float) -> bool:
    return (now - record.granted_until).total_seconds() + fence > lease


def both_expired(
    node: NodeRecord, record: LeaseRecord | None, now: datetime, lease: float, fence: float
) -> bool:
    """Up, and granted by neither bucket for longer than a lease."""
    if not expired(node, now, lease, fence):
        return False
    return record is None or not holds(record, node) or lease_expired(record, now, lease, fence)


def revoke(
    record: LeaseRecord | None, node: NodeRecord, now: datetime, lease: float, fence: float
) -> LeaseRecord | None:
    """The record that revokes ``node``'s incarnation in ``leases``, written (again, even when
    it is revoked already: the write fails every adoption read before it) right before the node
    is declared lost; None when it may not be revoked (a grant there is still running, or our
    copies disagree: check again)."""
    if record is None or record.incarnation < node.incarnation:
        until = node.granted_until or node.since
        return LeaseRecord(node.name, node.incarnation, until, revoked=True)
    if record.incarnation > node.incarnation:
        return None  # our copy of ``nodes`` is behind
    if not record.revoked and not lease_expired(record, now, lease, fence):
        return None
    return msgspec.structs.replace(record, revoked=True)


def silent_since(
    node: NodeRecord, record: LeaseRecord | None, now: datetime, fence: float
) -> float:
    """Seconds since the node's last grant in either bucket."""
    silent = silent_for(node, now, fence)
    if record is not None and holds(record, node):
        silent = min(silent, (now - record.granted_until).total_seconds() + fence)
    return silent
