"""Live endpoints of a service: the groups offering it, where they run, at which address."""

from __future__ import annotations

from ipaddress import IPv4Interface

import msgspec

from vigil.wire.records import ServiceRecord

from . import status as status_mod
from .bus import Bus, get_record, kv


class Endpoint(msgspec.Struct, frozen=True):
    service: str
    group: str
    node: str
    address: str  # the IP clients connect to (no prefix)


async def endpoints(bus: Bus, service: str) -> list[Endpoint]:
    """The service's live endpoints. Every group is also a service of its own name."""
    view = await status_mod.read(bus)
    record = await get_record(await kv(bus, bus.subjects.bucket_services), service, ServiceRecord)
    if record is not None:
        members = record.members
    elif view.group(service) is not None:
        members = [service]
    else:
        raise LookupError(f"unknown service {service!r}")
    out = []
    for name in members:
        group = view.group(name)
        if group is not None and group.node is not None and group.mode in ("normal", "failover"):
            ip = str(IPv4Interface(group.address).ip)
            out.append(Endpoint(service, name, group.node, ip))
    return out
