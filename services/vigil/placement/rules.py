"""The placement rules, pure: cluster state in, decisions out. No I/O, no clock.

A node is *eligible* for a group when it is up, in the group's list, and the group has not
failed there for good within its failure timeout (``banned``). For each group, over its
sequenced list ``[preferred] + possible``:

- its app's stop failed on a live node (``blocked_by``): start it nowhere until that resolves;
- running on an eligible node: stay (failback is manual);
- its node was lost: the first eligible node *after* the lost one, wrapping to the front;
- its node is live but no longer eligible (the app failed there for good, the node left the
  list) or the group left the file: release it first (node None); it is placed again only once
  no live node still holds its address, so an address is never up on two live nodes;
- unplaced: its preferred node if eligible, else (once the cluster has settled, so that nodes
  still booting get their chance) the first eligible node of the list.

Operator intents: ``halted`` releases the group and keeps it nowhere; a switchover releases it
from its node (``moving_to`` the target) and places it on the target once released; ``enable``
re-enables switching and forgets the group's bans.

Failback ``auto``: a group away from its preferred node moves back (as a switchover) once the
preferred node has been up for ``failback_delay``.

Fencing: a ``restart`` group of a lost node whose node has a fence (``nodes[].fence`` or
``cluster.fence``) runs elsewhere only once that node's lost incarnation is recorded fenced
(``fenced``): its app may still run there, cut off from the bus. Until then the group stays
where it was, its reason saying why (``Change.fence`` tells the service what to fence).

Last node: when a failover lands a group on the last eligible node of its list, switching is
disabled for it (the service announces it and alerts once). With switching disabled the group
never moves again: if that node is lost it stays halted, if its app fails for good there it stays
offline (address held, app down), until an operator runs ``vigil enable``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass

import msgspec

from vigil.wire.cluster import ClusterSpec, Group
from vigil.wire.records import Intent, Placement


@dataclass(frozen=True)
class Snapshot:
    spec: ClusterSpec
    up: Set[str]
    current: Mapping[str, Placement]
    held_by: Mapping[str, Set[str]]  # group -> live nodes still holding its address
    settled: bool = True
    now: float = 0.0  # unix time, for bans
    intents: Mapping[str, Intent] = dataclasses.field(default_factory=dict)
    up_since: Mapping[str, float] = dataclasses.field(default_factory=dict)  # unix time
    # groups released (node None) whose address a live node still holds past the bound
    release_overdue: Set[str] = frozenset()
    release_bound: float = 0.0  # seconds, for the reason
    # node -> its current incarnation (NodeRecord); a node missing here is not checked
    incarnations: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # lost node -> the incarnation it was declared lost as (NodeRecord)
    lost_incarnations: Mapping[str, int] = dataclasses.field(default_factory=dict)
    fenced: Set[tuple[str, int]] = frozenset()  # (node, incarnation) powered off by its fence
    fence_errors: Mapping[str, str] = dataclasses.field(default_factory=dict)  # lost node -> why


def next_node(sequence: list[str], after: str | None, ok: Callable[[str], bool]) -> str | None:
    """First node after ``after`` in the list for which ``ok`` holds, wrapping; from the front
    if ``after`` is not in the list."""
    if after in sequence:
        i = sequence.index(after)
        order = sequence[i + 1 :] + sequence[:i]
    else:
        order = sequence
    return next((n for n in order if ok(n)), None)


def next_live(sequence: list[str], after: str | None, up: Set[str]) -> str | None:
    return next_node(sequence, after, lambda n: n in up)


@dataclass(frozen=True)
class Change:
    node: str | None
    reason: str
    moving_to: str | None = None
    switchover_id: int | None = None  # set when this change applies an operator's switchover
    switching: bool | None = None  # set when this change turns switching off (or back on)
    enable_id: int | None = None  # set when this change applies an operator's enable
    renew: bool = False  # the same node, anew: it rejoined since (a new incarnation)
    # held back until this (node, incarnation) is fenced; only the reason is stored (same epoch)
    fence: tuple[str, int] | None = None


def decide_group(group: Group, snap: Snapshot) -> Change | None:
    """The group's new placement, or None to leave it as it is."""
    old = _decide_group(group, snap)
    if old is None or isinstance(old, Change):
        return old
    return Change(*old)


def _decide_group(group: Group, snap: Snapshot) -> Change | tuple[str | None, str] | None:
    cur = snap.current.get(group.name)
    node = cur.node if cur else None
    banned = cur.banned if cur else {}
    sequence = group.sequence

    def eligible(n: str) -> bool:
        return n in snap.up and n in sequence and banned.get(n, 0.0) <= snap.now

    intent = snap.intents.get(group.name, Intent(group.name))
    switching = cur.switching if cur else True
    if cur is not None and intent.enable_id > cur.enable_id:
        return Change(
            node, "switching enabled by the operator", switching=True, enable_id=intent.enable_id
        )

    def landing(target: str | None, reason: str) -> Change:
        """A failover to ``target``: switching goes off if it is the last eligible node."""
        others = [n for n in sequence if n != target and eligible(n)]
        if target is not None and not others:
            return Change(
                target,
                f"{reason}; {target} is the last eligible node: switching disabled",
                switching=False,
            )
        return Change(target, reason)

    if cur is not None and cur.blocked_by in snap.up:
        if node is not None:
            return None, f"stop failed on {cur.blocked_by}"
        return None
    if intent.admin == "halted":
        return (None, "halted by the operator") if node is not None else None
    if node is not None:
        if (
            eligible(node)
            and cur is not None
            and snap.incarnations.get(node, cur.incarnation) != (cur.incarnation)
        ):
            # Declared lost and back before the group moved: what it held then is void
            # (it let go); it takes the group again only from a decision for who it is now.
            return Change(node, f"node {node} rejoined: placed on it anew", renew=True)
        if eligible(node):
            switch = intent.switchover_to
            if cur is not None and intent.switchover_id > cur.switchover_id:
                if switch is not None and switch != node and eligible(switch):
                    return Change(
                        None,
                        f"switchover from {node} to {switch}",
                        moving_to=switch,
                        switchover_id=intent.switchover_id,
                    )
                return Change(
                    node,
                    f"switchover to {switch} refused: not eligible",
                    switchover_id=intent.switchover_id,
                )
            preferred = group.preferred
            if (
                group.failback == "auto"
                and switching
                and node != preferred
                and eligible(preferred)
                and snap.now - snap.up_since.get(preferred, snap.now) >= group.failback_delay
            ):
                return Change(None, f"failback to {preferred}", moving_to=preferred)
            return None
        if not switching and node in snap.up and banned.get(node, 0.0) > snap.now:
            return None  # last node, app failed for good: hold the address (offline)
        if node in snap.up:
            why = (
                f"the app failed for good on {node}"
                if banned.get(node, 0.0) > snap.now
                else f"node {node} is no longer in the group's list"
            )
            return None, why
        if node not in snap.lost_incarnations and not snap.settled:
            # No record of the node here yet, just started: another replica placed the group
            # on it because it saw the node up, and our cache has not caught up. Not lost.
            return None
        if not switching:
            return None, f"node {node} lost; switching is disabled: the group stays halted"
        lost = (node, snap.lost_incarnations.get(node, cur.incarnation if cur else 0))
        if (
            group.on_failover == "restart"
            and snap.spec.fence(node) is not None
            and lost not in snap.fenced
        ):
            why = f"node {node} lost: waiting for it to be fenced before the app runs elsewhere"
            if error := snap.fence_errors.get(node):
                why += f" (fence failed: {error})"
            return Change(node, why, fence=lost)
        return landing(next_node(sequence, node, eligible), f"node {node} lost")
    if not switching:
        return None  # stays where it is (halted) until an operator enables switching
    holders = snap.held_by.get(group.name)
    if holders:
        # Released but still held by a live node: wait for its release, within a bound. Past
        # it, a holder that may run the group gets it back (it holds the address anyway).
        if group.name not in snap.release_overdue:
            return None
        holder = next((n for n in sequence if n in holders and eligible(n)), None)
        if holder is None:
            return None
        return holder, (
            f"{holder} did not release the address within {snap.release_bound:g}s: "
            f"placed back on {holder}"
        )
    if cur is not None and cur.moving_to is not None and eligible(cur.moving_to):
        return cur.moving_to, "switchover"
    if eligible(group.preferred):
        return group.preferred, "preferred node up"
    if not snap.settled and cur is None:
        return None  # starting: give the preferred node time to join
    target = next_node(sequence, None, eligible)
    if target is None:
        return None
    reason = "preferred node unavailable, first eligible node in the list"
    return landing(target, reason) if cur is not None else (target, reason)


def decide(snap: Snapshot) -> list[Placement]:
    """New placements for every group whose placement must change (epoch + 1 when it moves)."""
    names = {g.name for g in snap.spec.groups} | set(snap.current)
    return [p for name in sorted(names) if (p := decide_one(snap, name)) is not None]


def fences_wanted(snap: Snapshot) -> dict[tuple[str, int], list[str]]:
    """The lost (node, incarnation)s to fence now, each with the groups that wait for it."""
    wanted: dict[tuple[str, int], list[str]] = {}
    lost = set(snap.lost_incarnations) | {
        p.node for p in snap.current.values() if p.node is not None and p.node not in snap.up
    }
    if not any(snap.spec.fence(n) is not None for n in lost):
        return wanted
    for group in snap.spec.groups:
        change = decide_group(group, snap)
        if change is not None and change.fence is not None:
            wanted.setdefault(change.fence, []).append(group.name)
    return wanted


def decide_one(snap: Snapshot, name: str) -> Placement | None:
    """The new placement of group ``name`` (in the file or only in the bucket), or None."""
    cur = snap.current.get(name)
    group = snap.spec.group(name)
    if group is None:  # left the cluster file: release it, once
        if cur is None or cur.node is None:
            return None
        return Placement(name, None, cur.epoch + 1, "group removed from the cluster file")
    change = decide_group(group, snap)
    if change is None:
        return None
    if change.fence is not None:  # waiting for a fence: say so, decide nothing
        if cur is None or cur.reason == change.reason:
            return None
        return msgspec.structs.replace(cur, reason=change.reason)
    incarnation = snap.incarnations.get(change.node, 0) if change.node is not None else 0
    if cur is None:
        return Placement(
            group.name,
            change.node,
            1,
            change.reason,
            moving_to=change.moving_to,
            incarnation=incarnation,
        )
    if (
        cur.node == change.node
        and change.switchover_id is None
        and change.enable_id is None
        and not change.renew
    ):
        return None
    # A new epoch only when the group moves (or is given anew): an operator's enable or a
    # refused switchover leaves it where it is, and its app running.
    moved = change.renew or (change.node, change.moving_to) != (cur.node, cur.moving_to)
    return msgspec.structs.replace(
        cur,
        incarnation=incarnation if moved else cur.incarnation,
        node=change.node,
        epoch=cur.epoch + 1 if moved else cur.epoch,
        reason=change.reason,
        moving_to=change.moving_to,
        switchover_id=(
            change.switchover_id if change.switchover_id is not None else cur.switchover_id
        ),
        switching=change.switching if change.switching is not None else cur.switching,
        enable_id=change.enable_id if change.enable_id is not None else cur.enable_id,
        banned={} if change.enable_id is not None else cur.banned,
    )
