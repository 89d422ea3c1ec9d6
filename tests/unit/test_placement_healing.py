"""Placement rules that heal stuck states: a node back as a new incarnation, a release that
never comes, an enable that does not move the group."""

from __future__ import annotations

from vigil.core.config import load_data
from vigil.placement.rules import Snapshot, decide
from vigil.wire.records import Intent, Placement

SPEC = load_data(
    {
        "cluster": {"name": "t"},
        "nodes": [{"name": n} for n in ("n1", "n2", "n3")],
        "groups": [
            {
                "name": "g1",
                "address": "10.213.0.101/24",
                "preferred": "n1",
                "possible": ["n2", "n3"],
                "app": {"command": "x"},
            }
        ],
    }
)
UP = {"n1", "n2", "n3"}


def test_a_group_on_a_node_that_came_back_as_a_new_incarnation_is_given_anew() -> None:
    cur = {"g1": Placement("g1", "n1", 4, incarnation=1)}
    snap = Snapshot(SPEC, UP, cur, {}, incarnations={"n1": 2, "n2": 1, "n3": 1})
    (p,) = decide(snap)
    assert (p.node, p.epoch, p.incarnation) == ("n1", 5, 2)
    assert "rejoined" in p.reason
    assert decide(Snapshot(SPEC, UP, {"g1": p}, {}, incarnations={"n1": 2})) == []


def test_a_new_placement_carries_the_node_s_incarnation() -> None:
    (p,) = decide(Snapshot(SPEC, UP, {}, {}, incarnations={"n1": 7}))
    assert (p.node, p.incarnation) == ("n1", 7)


def test_a_release_that_never_comes_ends_placed_on_the_holder_after_the_bound() -> None:
    cur = {"g1": Placement("g1", None, 6, moving_to="n1")}
    held = {"g1": {"n2"}}
    assert decide(Snapshot(SPEC, UP, cur, held)) == []  # waits within the bound
    (p,) = decide(Snapshot(SPEC, UP, cur, held, release_overdue={"g1"}, release_bound=3.2))
    assert (p.node, p.epoch) == ("n2", 7)
    assert "did not release the address within 3.2s" in p.reason


def test_past_the_bound_a_holder_that_may_not_run_the_group_keeps_it_waiting() -> None:
    cur = {"g1": Placement("g1", None, 6, banned={"n2": 1e12})}
    snap = Snapshot(SPEC, UP, cur, {"g1": {"n2"}}, release_overdue={"g1"}, now=1.0)
    assert decide(snap) == []


def test_enable_on_a_placed_group_keeps_its_epoch() -> None:
    cur = {"g1": Placement("g1", "n3", 9, switching=False)}
    snap = Snapshot(SPEC, UP, cur, {}, intents={"g1": Intent("g1", enable_id=1)})
    (p,) = decide(snap)
    assert (p.node, p.epoch, p.switching, p.enable_id) == ("n3", 9, True, 1)


def test_a_replica_that_has_not_heard_of_the_node_yet_does_not_move_its_group() -> None:
    """Two replicas start: one sees n2 join and places g1 there; the other, whose node cache
    has no record of n2 yet, must not read that as 'n2 lost' and fail the group over to the
    last node of its list with switching disabled (the compose test, once)."""
    cur = {"g1": Placement("g1", "n2", 1)}
    assert decide(Snapshot(SPEC, {"n1"}, cur, {}, settled=False)) == []
    # Once settled, a node that never said hello is lost.
    (p,) = decide(Snapshot(SPEC, {"n1"}, cur, {}, settled=True))
    assert (p.node, p.epoch) == ("n1", 2) and "node n2 lost" in p.reason
    # A node declared lost is lost at once, settled or not.
    (p,) = decide(Snapshot(SPEC, {"n1", "n3"}, cur, {}, settled=False, lost_incarnations={"n2": 1}))
    assert p.node == "n3" and "node n2 lost" in p.reason
