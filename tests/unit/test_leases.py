"""Node leases, pure: records and the clock in, records out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vigil.membership.leases import declare_lost, expired, grant, joined, silent_for
from vigil.wire.records import NodeRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FENCE, LEASE = 0.4, 0.8


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_first_grant_joins_with_incarnation_one() -> None:
    r = grant(None, "n1", T0, FENCE)
    assert (r.state, r.incarnation, r.granted_until) == ("up", 1, at(FENCE))
    assert joined(None, r)


def test_grants_keep_a_node_up_and_its_incarnation() -> None:
    r = grant(None, "n1", T0, FENCE)
    for i in range(1, 50):
        before = r
        r = grant(r, "n1", at(i * 0.2), FENCE)
        assert not joined(before, r) and r.incarnation == 1 and r.since == T0
        assert not expired(r, at(i * 0.2 + LEASE - 0.01), LEASE, FENCE)


def test_lost_a_lease_after_the_last_grant_never_before_its_fence_lapsed() -> None:
    r = grant(None, "n1", T0, FENCE)
    assert not expired(r, at(LEASE - 0.001), LEASE, FENCE)
    assert expired(r, at(LEASE + 0.001), LEASE, FENCE)
    assert abs(silent_for(r, at(1.0), FENCE) - 1.0) < 1e-9
    # the fence (granted_until) lapsed lease - fence before the node may be declared lost
    assert r.granted_until is not None and r.granted_until <= at(LEASE) - timedelta(seconds=0.4)


def test_a_lost_node_rejoins_with_the_next_incarnation() -> None:
    r = declare_lost(grant(None, "n1", T0, FENCE), at(1.0))
    assert r.state == "lost" and not expired(r, at(9.0), LEASE, FENCE)
    again = grant(r, "n1", at(2.0), FENCE)
    assert (again.state, again.incarnation, again.since) == ("up", 2, at(2.0))
    assert joined(r, again)


def test_a_record_from_before_grants_were_recorded_counts_from_its_since() -> None:
    old = NodeRecord("n1", "up", T0)
    assert not expired(old, at(LEASE - 0.01), LEASE, FENCE)
    assert expired(old, at(LEASE + 0.01), LEASE, FENCE)
