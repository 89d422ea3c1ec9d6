"""Node leases, pure: records and the clock in, records out."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from vigil.membership.leases import (
    adopt,
    both_expired,
    declare_lost,
    expired,
    extend,
    grant,
    joined,
    revoke,
    silent_for,
    silent_since,
)
from vigil.wire.records import LeaseRecord, NodeRecord

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


# -- the second bucket -----------------------------------------------------------------------
def test_the_leases_bucket_grants_only_an_incarnation_nodes_established() -> None:
    node = grant(None, "n1", T0, FENCE)
    assert extend(None, node, T0, FENCE) is None  # nothing adopted yet: ``nodes`` grants
    held = adopt(None, node)
    assert held == LeaseRecord("n1", 1, at(FENCE))
    assert adopt(held, node) is None  # adopted already
    later = extend(held, node, at(1), FENCE)
    assert later is not None and (later.incarnation, later.granted_until) == (1, at(1 + FENCE))


def test_leases_grants_only_what_our_copy_of_nodes_holds_up() -> None:
    """A ``nodes`` record rewritten (unreadable) or deleted starts over: its (re)join takes an
    incarnation above the one ``leases`` holds, and ``leases`` never grants one that ``nodes``
    does not hold up (else the node's agent flips between two and drops every address)."""
    node = grant(None, "n1", T0, FENCE)
    held = adopt(None, node)
    assert held is not None
    assert extend(held, None, at(1), FENCE) is None
    assert extend(held, declare_lost(node, at(1)), at(1), FENCE) is None
    reset = grant(None, "n1", at(2), FENCE, above=held.incarnation)
    assert reset.incarnation == 2 and extend(held, reset, at(2), FENCE) is None
    assert adopt(held, reset) == LeaseRecord("n1", 2, at(2 + FENCE))
    assert grant(declare_lost(node, at(1)), "n1", at(2), FENCE, above=5).incarnation == 6


def test_a_fresh_grant_in_either_bucket_keeps_a_node_from_being_lost() -> None:
    node = grant(None, "n1", T0, FENCE)
    held = adopt(None, node)
    assert held is not None
    # ``nodes`` electing a leader: only ``leases`` grants, for seconds
    held = extend(held, node, at(5), FENCE)
    assert held is not None
    assert expired(node, at(5.1), LEASE, FENCE) and not both_expired(
        node, held, at(5.1), LEASE, FENCE
    )
    assert abs(silent_since(node, held, at(5.1), FENCE) - 0.1) < 1e-9  # since the leases grant
    # and the other way round: ``leases`` electing, ``nodes`` granting
    node = grant(node, "n1", at(10), FENCE)
    assert not both_expired(node, held, at(10.1), LEASE, FENCE)
    assert both_expired(node, held, at(10 + FENCE + LEASE), LEASE, FENCE)


def test_a_revoked_or_foreign_lease_record_keeps_no_node_up() -> None:
    node = grant(None, "n1", T0, FENCE)
    stale = LeaseRecord("n1", 1, at(100), revoked=True)
    assert both_expired(node, stale, at(LEASE + 0.01), LEASE, FENCE)
    other = LeaseRecord("n1", 7, at(100))
    assert both_expired(node, other, at(LEASE + 0.01), LEASE, FENCE)


def test_a_lease_is_revoked_only_once_its_last_grant_lapsed() -> None:
    node = grant(None, "n1", T0, FENCE)
    held = adopt(None, node)
    assert held is not None
    held = extend(held, node, at(1), FENCE)
    assert held is not None
    assert revoke(held, node, at(1 + LEASE - 0.01), LEASE, FENCE) is None
    revoked = revoke(held, node, at(1 + LEASE + 0.01), LEASE, FENCE)
    assert revoked is not None and revoked.revoked and revoked.incarnation == 1
    # written again by every declaration (its write fails adoptions read before it)
    assert revoke(revoked, node, at(2), LEASE, FENCE) == revoked
    assert extend(revoked, node, at(3), FENCE) is None
    # the next incarnation (a rejoin through ``nodes``) is leased there again
    back = grant(declare_lost(node, at(2)), "n1", at(3), FENCE)
    assert back.incarnation == 2 and adopt(revoked, back) == LeaseRecord("n1", 2, at(3 + FENCE))


def test_a_revocation_whose_declaration_failed_is_taken_back_by_a_grant_in_nodes() -> None:
    """The node was silent in both buckets, its lease was revoked, and then its heartbeat was
    granted in ``nodes`` before the declaration's compare-and-set there: it was alive, and
    ``leases`` may grant it again (else one election of ``nodes`` darkens it)."""
    node = grant(None, "n1", T0, FENCE)
    revoked = revoke(adopt(None, node), node, at(LEASE + 0.1), LEASE, FENCE)
    assert revoked is not None
    node = grant(node, "n1", at(LEASE + 0.2), FENCE)
    assert adopt(revoked, node) == LeaseRecord("n1", 1, at(LEASE + 0.2 + FENCE))
    assert adopt(LeaseRecord("n1", 2, T0), node) is None  # a newer incarnation: never back


def test_an_incarnation_never_adopted_is_revoked_all_the_same() -> None:
    node = grant(None, "n1", T0, FENCE)
    for before in (None, LeaseRecord("n1", 0, T0, revoked=True)):
        revoked = revoke(before, node, at(5), LEASE, FENCE)
        assert revoked == LeaseRecord("n1", 1, at(FENCE), revoked=True)
        assert extend(revoked, node, at(6), FENCE) is None
    ahead = LeaseRecord("n1", 2, at(5))  # our copy of ``nodes`` is behind: decide again later
    assert revoke(ahead, node, at(9), LEASE, FENCE) is None


class Register:
    """A bucket key: its record and revision, written only by compare-and-set."""

    def __init__(self) -> None:
        self.value: LeaseRecord | None = None
        self.revision = 0

    def cas(self, value: LeaseRecord, last: int) -> bool:
        if last != self.revision:
            return False
        self.value, self.revision = value, self.revision + 1
        return True


def test_no_grant_outlives_a_loss_declaration_in_random_interleavings() -> None:
    """Two buckets; replicas grant in either, adopt late (a slow replica, from a lease record
    read before its grant in ``nodes``), and declare losses in two steps that other writes may
    come between. Once ``nodes`` says an incarnation is lost, every grant of it has lapsed, and
    none is stored afterwards."""
    rng = random.Random(7)
    adoptions = declared = 0
    for _ in range(400):
        t = 0.0
        node: NodeRecord | None = None
        nodes_revision = 0
        leased = Register()
        # adoptions to write: (lease record and revision read before the nodes grant, the grant)
        pending: list[tuple[LeaseRecord | None, int, NodeRecord]] = []
        # declarations half done: leases revoked; the nodes revision read before that
        declaring: list[int] = []
        fences: dict[int, float] = {}  # incarnation -> end of its latest grant (seconds)
        copies: list[NodeRecord] = []  # what replicas' lagging copies of ``nodes`` may show
        for _ in range(80):
            t += rng.choice((0.05, 0.2, 0.5, 1.0))
            op = rng.choice(("nodes", "leases", "adopt", "revoke", "declare"))
            if op == "nodes":
                if node is not None and node.state == "lost" and rng.random() < 0.7:
                    continue  # the node stays dead a while
                seen = (leased.value, leased.revision)
                node = grant(node, "n1", at(t), FENCE)
                copies.append(node)
                nodes_revision += 1
                pending.append((*seen, node))
                fences[node.incarnation] = t + FENCE
            elif op == "leases":
                copy = rng.choice(copies[-3:]) if copies else None  # maybe stale
                after = extend(leased.value, copy, at(t), FENCE)
                if after is not None and leased.cas(after, leased.revision):
                    assert node is not None and node.state == "up", "granted after the loss"
                    assert after.incarnation == node.incarnation
                    fences[after.incarnation] = t + FENCE
            elif op == "adopt" and pending:
                record, revision, granted = pending.pop(rng.randrange(len(pending)))
                after = adopt(record, granted)
                if after is not None and leased.cas(after, revision):
                    adoptions += 1
            elif op == "revoke" and node is not None and node.state == "up":
                read = nodes_revision
                if not both_expired(node, leased.value, at(t), LEASE, FENCE):
                    continue
                revoked = revoke(leased.value, node, at(t), LEASE, FENCE)
                if revoked is not None and leased.cas(revoked, leased.revision):
                    declaring.append(read)
            elif op == "declare" and declaring and node is not None:
                if declaring.pop(rng.randrange(len(declaring))) != nodes_revision:
                    continue  # written meanwhile: the compare-and-set fails
                node = declare_lost(node, at(t))
                copies.append(node)
                nodes_revision += 1
                declared += 1
                # every fence of that incarnation lapsed ``lease - fence`` ago
                assert fences.get(node.incarnation, 0.0) <= t - (LEASE - FENCE) + 1e-9
    assert adoptions > 100 and declared > 100  # the interleavings did exercise both
