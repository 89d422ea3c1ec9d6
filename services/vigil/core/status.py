"""The operator's view of the cluster, read from the buckets: what ``vigil status`` prints."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Literal, TypeVar

import msgspec

from vigil.wire.cluster import ClusterSpec
from vigil.wire.records import AddressStatus, AppStatus, Mode, NodeRecord, Placement, StrayNode

from .bus import ELECTING, QUICK_TIMEOUT, Bus, all_records, get_record, replica_reader
from .clusterconfig import ConfigSource
from .stray import fresh, listed
from .subjects import address_key, app_key

log = logging.getLogger(__name__)
T = TypeVar("T", bound=msgspec.Struct)


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
    # streams not fully redundant now (``redundancy.degraded``): one more server death hurts
    bus: list[str] = msgspec.field(default_factory=list)

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
    """The view, from direct gets any replica answers (``replica_reader``): it reads while
    JetStream elects a new leader after a server died, when a leader read would time out.

    Only the keys the view needs are read, each named by the cluster file: a node's record, a
    group's placement, and the address and app records of the node it is placed on. Listing a
    bucket's keys needs the leader: only the stray list does, and it is left empty (logged)
    while there is none."""
    for pause in DIRECT_RETRIES:
        try:
            return await _read(bus, direct=True)
        except ELECTING:  # our connection moving to another server: ask again
            await asyncio.sleep(pause)
    return await _read(bus, direct=False)  # buckets created before direct gets were allowed


DIRECT_RETRIES = (0.1, 0.2, 0.4)  # a reconnect takes well under a second


async def _read(bus: Bus, direct: bool) -> StatusView:
    s = bus.subjects
    source = ConfigSource(bus, replica_reader(bus, s.bucket_config, direct))
    await source.refresh(strict=True)
    spec = source.spec
    if spec is None:
        return build(None, {}, {}, {}, {})

    async def each(bucket: str, keys: list[str], kind: type[T]) -> dict[str, T]:
        handle = replica_reader(bus, bucket, direct)
        got = await asyncio.gather(*(get_record(handle, k, kind) for k in keys))
        return {k: r for k, r in zip(keys, got, strict=True) if r is not None}

    nodes = await each(s.bucket_nodes, [n.name for n in spec.nodes], NodeRecord)
    placements = await each(s.bucket_placement, [g.name for g in spec.groups], Placement)
    placed = [(p.node, g) for g, p in placements.items() if p.node is not None]
    addresses = await each(s.bucket_observed, [address_key(n, g) for n, g in placed], AddressStatus)
    apps = await each(s.bucket_observed, [app_key(n, g) for n, g in placed], AppStatus)
    try:
        strays = await asyncio.wait_for(
            all_records(replica_reader(bus, s.bucket_observed, False), StrayNode, "stray."),
            QUICK_TIMEOUT,
        )
    except (TimeoutError, *ELECTING) as exc:
        log.info("stray services not listed: %r (the observed bucket has no leader now)", exc)
        strays = {}
    return build(spec, nodes, placements, addresses, apps, strays)


def render_table(view: StatusView) -> str:
    lines = [f"cluster {view.cluster or '(no cluster file applied)'}", "", f"{'NODE':<12} STATE"]
    lines += [f"{n.name:<12} {n.state}" for n in view.nodes]
    lines += [f"{name}: heartbeating but not in the cluster file" for name in view.strays]
    if view.bus:
        lines += ["", "BUS (not redundant now: one more server death stops what it stores)"]
        lines += view.bus
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
