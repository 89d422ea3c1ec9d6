"""The placement rules, pure: cluster state in, decisions out. No I/O, no clock.

For each group, over its sequenced list ``[preferred] + possible``:

- running on a live node that is still in its list: stay (failback is manual);
- its node was lost: the first live node *after* the lost one, wrapping to the front;
- its node is live but no longer in its list, or the group left the file: release it first
  (node None); it is placed again only once no live node still holds its address, so an
  address is never up on two live nodes;
- unplaced: its preferred node if live, else (once the cluster has settled, so that nodes
  still booting get their chance) the first live node of the list.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from schemas.cluster import ClusterSpec, Group
from schemas.records import Placement


@dataclass(frozen=True)
class Snapshot:
    spec: ClusterSpec
    up: Set[str]
    current: Mapping[str, Placement]
    held_by: Mapping[str, Set[str]]  # group -> live nodes still holding its address
    settled: bool = True


def next_live(sequence: list[str], after: str | None, up: Set[str]) -> str | None:
    """First live node after ``after`` in the list, wrapping; from the front if ``after`` is
    not in the list."""
    if after in sequence:
        i = sequence.index(after)
        order = sequence[i + 1 :] + sequence[:i]
    else:
        order = sequence
    return next((n for n in order if n in up), None)


def decide_group(group: Group, snap: Snapshot) -> tuple[str | None, str] | None:
    """The group's new node and the reason, or None to leave it as it is."""
    cur = snap.current.get(group.name)
    node = cur.node if cur else None
    sequence = group.sequence
    if node is not None:
        if node in snap.up:
            if node in sequence:
                return None
            return None, f"node {node} is no longer in the group's list"
        return next_live(sequence, node, snap.up), f"node {node} lost"
    if snap.held_by.get(group.name):
        return None  # released but still held by a live node: wait for its release
    if group.preferred in snap.up:
        return group.preferred, "preferred node up"
    if not snap.settled and cur is None:
        return None  # starting: give the preferred node time to join
    target = next_live(sequence, None, snap.up)
    if target is None:
        return None
    return target, "preferred node down, first live node in the list"


def decide(snap: Snapshot) -> list[Placement]:
    """New placements (each with its epoch + 1) for every group whose placement must change."""
    out: list[Placement] = []
    for group in snap.spec.groups:
        change = decide_group(group, snap)
        if change is None:
            continue
        node, reason = change
        cur = snap.current.get(group.name)
        if cur is not None and cur.node == node:
            continue
        out.append(Placement(group.name, node, (cur.epoch if cur else 0) + 1, reason))
    names = {g.name for g in snap.spec.groups}
    for name, cur in sorted(snap.current.items()):
        if name not in names and cur.node is not None:
            out.append(Placement(name, None, cur.epoch + 1, "group removed from the cluster file"))
    return out
