"""The kernel's word on where an app can bind: the IPv4 addresses on this network namespace.

The supervisor starts an app only where its group's address is configured. Its address service's
events and records say so too, but while JetStream elects a leader the record cannot be stored
and an event sent across a restarting server can be lost: a supervisor that started the app on a
stale "held" saw it fail to bind, four times, and banned it from the node for good (a chaos run,
docs/reliability.md). The kernel is local and never stale.

Synchronous (pyroute2's ``IPRoute`` drives its own loop): call it with ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from socket import AF_INET

from pyroute2 import IPRoute

LocalAddresses = Callable[[], set[IPv4Address]]


def local_addresses() -> set[IPv4Address]:
    with IPRoute() as ipr:
        msgs = ipr.get_addr(family=AF_INET)
    found: set[IPv4Address] = set()
    for msg in msgs:
        # IFA_LOCAL is our address; IFA_ADDRESS is the peer's on point-to-point links
        address = msg.get("local") or msg.get("address")
        if address is not None:
            found.add(IPv4Address(address))
    return found
