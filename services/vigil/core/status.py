"""The operator's view of the cluster, read from the buckets: what ``vigil status`` prints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

from vigil.wire.cluster import ClusterSpec
from vigil.wire.records import AddressStatus, AppStatus, Mode, NodeRecord, Placement, StrayNode

from .bus import Bus, all_records, kv
from .clusterconfig import ConfigSource
from .stray import fresh, listed
from .subjects import address_key, app_key


class NodeView(msgspec.Struct):
    name: str
    state: Literal["up", "lost"]


class GroupView(msgspec.Struct):
    name: str
    node: str | None
    mode: Mode
    address: str
    epoch: int
    preferred: str
    switching: Literal["enabled", "disabled"] = "enabled"
    # why a group placed on a lost node has not moved (waiting for its fence, say)
    waiting: str = ""


class StatusView(msgspec.Struct, omit_defaults=True):
    cluster: str | None
    nodes: list[NodeView]
    groups: list[GroupView]
    # node services running under a name the cluster file does not list (they touch nothing)
    strays: list[str] = msgspec.field(default_factory=list)

    def group(self, name: str) -> GroupView | None:
        return next((g for g in self.groups if g.name == name), None)


def mode_of(
    group: str,
    preferred: str,
    placement: Placement | None,
    addresses: dict[str, AddressStatus],
    apps: dict[str, AppStatus],
) -> tuple[str | None, Mode]:
    node = placement.node if placement else None
    if node is None:
        return None, "halted"
    app = apps.get(app_key(node, group))
    address = addresses.get(address_key(node, group))
    if app is not None and app.running:
        return node, "normal" if node == preferred else "failover"
    if address is not None and address.held:
        return node, "offline"
    return node, "halted"


def build(
    spec: ClusterSpec | None,
    nodes: dict[str, NodeRecord],
    placements: dict[str, Placement],
    addresses: dict[str, AddressStatus],
    apps: dict[str, AppStatus],
    strays: dict[str, StrayNode] | None = None,
    now: datetime | None = None,
) -> StatusView:
    if spec is None:
        return StatusView(None, [], [])
    now = now or datetime.now(UTC)
    stray_names = sorted(
        {r.node for r in (strays or {}).values() if fresh(r, now) and not listed(spec, r.node)}
    )
    node_views = [
        NodeView(n.name, "up" if (r := nodes.get(n.name)) and r.state == "up" else "lost")
        for n in spec.nodes
    ]
    groups = []
    up = {n.name for n in node_views if n.state == "up"}
    for g in spec.groups:
        placement = placements.get(g.name)
        node, mode = mode_of(g.name, g.preferred, placement, addresses, apps)
        waiting = placement.reason if placement and node is not None and node not in up else ""
        groups.append(
            GroupView(
                g.name,
                node,
                mode,
                g.address,
                placement.epoch if placement else 0,
                g.preferred,
                "enabled" if placement is None or placement.switching else "disabled",
                waiting,
            )
        )
    return StatusView(spec.cluster.name, node_views, groups, stray_names)


async def read(bus: Bus) -> StatusView:
    s = bus.subjects
    source = ConfigSource(bus)
    await source.refresh(strict=True)
    observed = await kv(bus, s.bucket_observed)
    return build(
        source.spec,
        await all_records(await kv(bus, s.bucket_nodes), NodeRecord),
        await all_records(await kv(bus, s.bucket_placement), Placement),
        await all_records(observed, AddressStatus, "address."),
        await all_records(observed, AppStatus, "app."),
        await all_records(observed, StrayNode, "stray."),
    )


def render_table(view: StatusView) -> str:
    lines = [f"cluster {view.cluster or '(no cluster file applied)'}", "", f"{'NODE':<12} STATE"]
    lines += [f"{n.name:<12} {n.state}" for n in view.nodes]
    lines += [f"{name}: heartbeating but not in the cluster file" for name in view.strays]
    head = (
        f"{'GROUP':<12} {'NODE':<8} {'MODE':<9} {'ADDRESS':<20} {'PREFERRED':<10} {'SWITCHING':<10}"
    )
    lines += ["", head + " EPOCH"]
    lines += [
        f"{g.name:<12} {g.node or '-':<8} {g.mode:<9} {g.address:<20} {g.preferred:<10} "
        f"{g.switching:<10} {g.epoch}"
        for g in view.groups
    ]
    lines += [f"{g.name}: {g.waiting}" for g in view.groups if g.waiting]
    return "\n".join(lines)
