"""The address service's plan: what to add and remove, in the halt order (app, then address)."""

from __future__ import annotations

from ipaddress import IPv4Interface

from vigil.address.plan import Acquire, Recorded, Release, Want, plan, record_fix

A = IPv4Interface("10.213.0.101/24")
B = IPv4Interface("10.213.0.102/24")
OWN = IPv4Interface("10.213.0.11/24")
MANAGED = {A: "web1", B: "web2"}


def test_acquire_what_is_placed_here() -> None:
    assert plan({"web1": Want("web1", A, 3)}, MANAGED, {OWN}, {}, set()) == [Acquire("web1", A, 3)]


def test_nothing_to_do_when_held_at_the_same_epoch() -> None:
    assert plan({"web1": Want("web1", A, 3)}, MANAGED, {OWN, A}, {"web1": 3}, set()) == []


def test_a_new_epoch_is_acquired_again_to_announce_it() -> None:
    assert plan({"web1": Want("web1", A, 4)}, MANAGED, {OWN, A}, {"web1": 3}, set()) == [
        Acquire("web1", A, 4)
    ]


def test_release_what_is_no_longer_ours() -> None:
    assert plan({}, MANAGED, {OWN, A}, {"web1": 3}, set()) == [Release("web1", A)]


def test_keep_the_address_while_the_app_still_runs_here() -> None:
    assert plan({}, MANAGED, {OWN, A}, {"web1": 3}, {"web1"}) == []


def test_never_touch_addresses_that_are_not_group_addresses() -> None:
    assert plan({}, MANAGED, {OWN, IPv4Interface("192.0.2.1/32")}, {}, set()) == []


def test_stale_address_after_a_restart_is_released() -> None:
    """A revived node finds a VIP it held before its death: not placed here, so it goes."""
    assert plan({"web2": Want("web2", B, 1)}, MANAGED, {OWN, A}, {}, set()) == [
        Release("web1", A),
        Acquire("web2", B, 1),
    ]


def test_a_switchover_releases_at_once_while_the_app_stops() -> None:
    assert plan({}, MANAGED, {OWN, A}, {"web1": 3}, {"web1"}, moving={"web1"}) == [
        Release("web1", A)
    ]


# -- the observed record must say what is held here ------------------------------------------


def test_an_acquired_address_whose_record_was_not_written_is_recorded_held() -> None:
    # the bucket elected a leader while the acquisition was recorded: the record never said it
    assert record_fix(None, 4, present=True) == Recorded(True, 4)
    assert record_fix(Recorded(False, 3), 4, present=True) == Recorded(True, 4)
    assert record_fix(Recorded(True, 3), 4, present=True) == Recorded(True, 4)


def test_a_record_that_says_what_is_held_is_left_alone() -> None:
    assert record_fix(Recorded(True, 4), 4, present=True) is None
    assert record_fix(Recorded(False, 4), None, present=False) is None
    assert record_fix(None, None, present=False) is None


def test_an_address_gone_from_the_interface_is_recorded_released_at_the_latest_epoch() -> None:
    assert record_fix(Recorded(True, 3), None, present=False, placed_epoch=5) == Recorded(False, 5)
    assert record_fix(Recorded(True, 6), None, present=False, placed_epoch=5) == Recorded(False, 6)


def test_an_acquisition_still_under_way_is_not_recorded_either_way() -> None:
    # held in our table, not on the interface as read for the batch: the acquire records it
    assert record_fix(Recorded(False, 3), 4, present=False) is None
    # on the interface, not in our table: the plan acquires or releases it first
    assert record_fix(Recorded(True, 3), None, present=True) is None
