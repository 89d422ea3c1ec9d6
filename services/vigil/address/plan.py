"""What the address service should do, pure: desired and actual addresses in, actions out.

The halt order is app first, then address: an address whose app still runs here is kept until
the supervisor reports the app stopped, so clients never reach a node with half a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from ipaddress import IPv4Interface


@dataclass(frozen=True)
class Want:
    group: str
    address: IPv4Interface
    epoch: int


@dataclass(frozen=True)
class Acquire:
    group: str
    address: IPv4Interface
    epoch: int


@dataclass(frozen=True)
class Release:
    group: str
    address: IPv4Interface


Action = Acquire | Release


def plan(
    desired: Mapping[str, Want],
    managed: Mapping[IPv4Interface, str],
    actual: Set[IPv4Interface],
    held_epoch: Mapping[str, int],
    app_running: Set[str],
    moving: Set[str] = frozenset(),
) -> list[Action]:
    """``managed`` maps every group address of the cluster to its group; addresses outside it
    are not ours and are never touched. A group in ``moving`` (a planned switchover) releases
    its address at once, its app's halt running in parallel, off the clients' critical path:
    the new node starts the app only once this one reports it stopped."""
    actions: list[Action] = []
    for address in sorted(actual & managed.keys()):
        group = managed[address]
        want = desired.get(group)
        if (want is None or want.address != address) and (
            group not in app_running or group in moving
        ):
            actions.append(Release(group, address))
    for group, want in sorted(desired.items()):
        if want.address not in actual or held_epoch.get(group) != want.epoch:
            actions.append(Acquire(group, want.address, want.epoch))
    return actions


@dataclass(frozen=True)
class Recorded:
    """What the observed record of a group's address on this node says."""

    held: bool
    epoch: int


def record_fix(
    recorded: Recorded | None, held_epoch: int | None, present: bool, placed_epoch: int = 0
) -> Recorded | None:
    """What the record must be rewritten to say so it tells what this node holds, or None when
    it already does. Acquiring and releasing act on the kernel first and record after: a record
    that failed to be written (the bucket electing a leader) is rewritten here, else the
    supervisor waits for a held record forever (acquired) or placement for a release."""
    if held_epoch is not None and present:
        if recorded is None or not recorded.held or recorded.epoch != held_epoch:
            return Recorded(True, held_epoch)
        return None
    if recorded is not None and recorded.held and held_epoch is None and not present:
        return Recorded(False, max(recorded.epoch, placed_epoch))
    return None
