"""Which groups offer each service, pure (Oracle's preferred and available instances).

A service is offered by as many groups as it has ``preferred`` ones. Members that still serve
stay. A free slot is filled by a serving preferred group first, then by an available one: so when
a preferred group fails or is halted the service resumes on an available group, or carries on
with the preferred ones left when no available group serves. ``failback: auto`` gives a slot
back to a preferred group as soon as it serves again; ``manual`` leaves the service where it is.
A preferred group that is on its way up (``starting``: placed on a live node, its app expected)
keeps its slot: an available group that happens to start first does not take it for good.
"""

from __future__ import annotations

from collections.abc import Set

from vigil.wire.cluster import Service


def members(
    service: Service,
    serving: Set[str],
    current: list[str] | None,
    starting: Set[str] = frozenset(),
) -> list[str]:
    slots = len(service.preferred)
    order = [*service.preferred, *service.available]
    keep = [g for g in (current or []) if g in serving and g in order]
    if service.failback == "auto":
        for group in service.preferred:
            if group in serving and group not in keep:
                borrowed = [m for m in keep if m in service.available]
                if len(keep) >= slots and borrowed:
                    keep.remove(borrowed[-1])
                if len(keep) < slots:
                    keep.append(group)
    for group in service.preferred:
        if len(keep) < slots and group in serving and group not in keep:
            keep.append(group)
    held = [g for g in service.preferred if g in starting and g not in keep and g not in serving]
    for group in service.available:
        if len(keep) + len(held) < slots and group in serving and group not in keep:
            keep.append(group)
    return sorted(keep, key=order.index)
