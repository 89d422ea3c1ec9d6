"""Service membership over preferred and available groups."""

from __future__ import annotations

from vigil.placement.offering import members
from vigil.wire.cluster import Service

SALES = Service("sales", preferred=["db1", "db2"], available=["db3"])
AUTO = Service("sales", preferred=["db1", "db2"], available=["db3"], failback="auto")


def test_normal_mode_runs_on_the_preferred_groups() -> None:
    assert members(SALES, {"db1", "db2", "db3"}, None) == ["db1", "db2"]


def test_a_failed_preferred_group_is_replaced_by_an_available_one() -> None:
    assert members(SALES, {"db2", "db3"}, ["db1", "db2"]) == ["db2", "db3"]


def test_no_available_group_left_carries_on_with_the_remaining_preferred() -> None:
    assert members(SALES, {"db2"}, ["db1", "db2"]) == ["db2"]


def test_manual_failback_keeps_the_service_where_it_is() -> None:
    assert members(SALES, {"db1", "db2", "db3"}, ["db2", "db3"]) == ["db2", "db3"]


def test_auto_failback_gives_the_slot_back_to_the_preferred_group() -> None:
    assert members(AUTO, {"db1", "db2", "db3"}, ["db2", "db3"]) == ["db1", "db2"]


def test_a_late_preferred_group_takes_a_free_slot_before_an_available_one() -> None:
    assert members(SALES, {"db1"}, None) == ["db1"]
    assert members(SALES, {"db1", "db2", "db3"}, ["db1"]) == ["db1", "db2"]


def test_nothing_serving_means_no_members() -> None:
    assert members(SALES, set(), ["db1", "db2"]) == []


def test_a_starting_preferred_group_keeps_its_slot() -> None:
    late = Service("svc", preferred=["db3"], available=["db1"])
    assert members(late, {"db1"}, None, starting={"db3"}) == []
    assert members(late, {"db1", "db3"}, [], starting=set()) == ["db3"]


def test_a_preferred_group_that_is_not_coming_frees_its_slot() -> None:
    late = Service("svc", preferred=["db3"], available=["db1"])
    assert members(late, {"db1"}, None, starting=set()) == ["db1"]
