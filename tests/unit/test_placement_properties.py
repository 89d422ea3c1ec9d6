"""Property tests of the placement rules (Hypothesis): invariants over random cluster states."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.core.config import load_data
from vigil.placement.rules import Snapshot, decide, next_live
from vigil.wire.records import Placement

NODES = [f"n{i}" for i in range(1, 6)]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    groups = []
    for i in range(draw(st.integers(1, 4))):
        order = draw(st.permutations(NODES))
        size = draw(st.integers(1, len(NODES)))
        groups.append(
            {
                "name": f"g{i}",
                "address": f"10.213.0.{101 + i}/24",
                "preferred": order[0],
                "possible": list(order[1:size]),
                "app": {"command": "x"},
            }
        )
    spec = load_data(
        {"cluster": {"name": "t"}, "nodes": [{"name": n} for n in NODES], "groups": groups}
    )
    up = set(draw(st.sets(st.sampled_from(NODES))))
    current = {}
    for g in spec.groups:
        if draw(st.booleans()):
            node = draw(st.one_of(st.none(), st.sampled_from(g.sequence)))
            current[g.name] = Placement(g.name, node, draw(st.integers(1, 50)))
    held = {
        g.name: set(draw(st.sets(st.sampled_from(sorted(up))))) if up else set()
        for g in spec.groups
        if draw(st.booleans())
    }
    return Snapshot(spec, up, current, held, draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_never_places_on_a_node_that_is_down_or_not_in_the_list(snap: Snapshot) -> None:
    for p in decide(snap):
        if p.node is not None:
            group = snap.spec.group(p.group)
            assert group is not None
            assert p.node in snap.up
            assert p.node in group.sequence


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_epochs_only_grow_and_each_group_changes_once(snap: Snapshot) -> None:
    decisions = decide(snap)
    assert len({p.group for p in decisions}) == len(decisions)
    for p in decisions:
        before = snap.current.get(p.group)
        assert p.epoch == (before.epoch if before else 0) + 1


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_never_places_while_another_live_node_holds_the_address(snap: Snapshot) -> None:
    for p in decide(snap):
        before = snap.current.get(p.group)
        if p.node is not None and (before is None or before.node is None):
            assert not snap.held_by.get(p.group)


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_a_group_on_a_live_listed_node_never_moves(snap: Snapshot) -> None:
    moved = {p.group for p in decide(snap)}
    for group in snap.spec.groups:
        cur = snap.current.get(group.name)
        if cur and cur.node in snap.up and cur.node in group.sequence:
            assert group.name not in moved


def test_next_live_wraps_after_the_lost_node() -> None:
    assert next_live(["a", "b", "c"], "b", {"a", "c"}) == "c"
    assert next_live(["a", "b", "c"], "c", {"a", "b"}) == "a"
    assert next_live(["a", "b", "c"], "x", {"b"}) == "b"
    assert next_live(["a"], "a", set()) is None
