"""Node leases, with time passed in."""

from __future__ import annotations

from vigil.membership.leases import Joined, Leases, Lost


def test_join_then_lost_after_the_lease() -> None:
    leases = Leases(lease=1.0)
    assert leases.heartbeat("n1", 0.0) == Joined("n1")
    assert leases.heartbeat("n1", 0.5) is None
    assert leases.expire(1.4) == []
    assert not leases.overdue(1.4)
    assert leases.overdue(1.51)
    assert leases.expire(1.51) == [Lost("n1", 1.51 - 0.5)]
    assert leases.expire(5.0) == []  # reported once
    assert leases.heartbeat("n1", 6.0) == Joined("n1")


def test_heartbeats_keep_a_node_up_indefinitely() -> None:
    leases = Leases(lease=0.8)
    leases.heartbeat("n1", 0.0)
    for i in range(1, 100):
        leases.heartbeat("n1", i * 0.2)
        assert leases.expire(i * 0.2 + 0.7) == []


def test_assumed_up_nodes_get_a_full_lease() -> None:
    leases = Leases(lease=1.0)
    leases.assume_up(["n1", "n2"], now=10.0)
    assert leases.expire(10.9) == []
    leases.heartbeat("n2", 10.5)
    assert leases.expire(11.1) == [Lost("n1", 11.1 - 10.0)]


def test_an_old_heartbeat_does_not_move_time_back() -> None:
    leases = Leases(lease=1.0)
    leases.heartbeat("n1", 5.0)
    leases.heartbeat("n1", 4.0)
    assert leases.expire(5.9) == []


def test_forget_drops_removed_nodes() -> None:
    leases = Leases(lease=1.0)
    leases.heartbeat("n1", 0.0)
    leases.heartbeat("n2", 0.0)
    leases.forget(["n2"])
    assert leases.expire(2.0) == [Lost("n2", 2.0)]
