"""IPv4 addresses on one interface, through rtnetlink (pyroute2), in the current network namespace.

Synchronous on purpose: every call is one short netlink round trip. Note that pyroute2's
synchronous ``IPRoute`` drives its own asyncio loop, so it raises ``RuntimeError("This event loop
is already running")`` when called from a coroutine; async callers use ``asyncio.to_thread``.

The netlink socket is bound to the network namespace of the thread that constructs ``Netlink``
and stays there whatever that thread does afterwards.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from ipaddress import IPv4Interface
from socket import AF_INET
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError

__all__ = ["Netlink", "NetlinkError"]


class NetlinkError(Exception):
    """A netlink request failed, or the interface does not exist.

    ``code`` is the kernel errno when there is one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _check_no_running_loop() -> None:
    """pyroute2's sync API fails obscurely inside a running event loop; say what to do instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise NetlinkError(
        "Netlink is synchronous and cannot run on an event loop's thread; "
        "call it through asyncio.to_thread()"
    )


class Netlink:
    """Add and remove IPv4 addresses on ``ifname``; both operations are idempotent.

    The interface index is looked up on every call (one cheap request), so an interface that
    is deleted and re-created under the same name keeps working.

    Secondary addresses: the kernel, not the caller, decides whether an address is primary or
    secondary. A VIP inside the subnet (same prefix length) of the node's own address becomes a
    secondary of it. A VIP in another subnet becomes the primary *of that subnet*, and then, unless
    ``net.ipv4.conf.<if>.promote_secondaries=1``, removing it also deletes every later VIP of that
    same subnet. Give VIPs the node address's prefix length, or /32, to stay clear of that.
    """

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._closed = True
        _check_no_running_loop()
        self._ipr: Any = IPRoute()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the netlink socket; idempotent. Like every call, not on an event loop's thread."""
        if self._closed:
            return
        _check_no_running_loop()
        self._closed = True
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- queries ---------------------------------------------------------------------------

    @property
    def ifindex(self) -> int:
        """The interface's current index; raises NetlinkError if there is no such interface."""
        self._check_open()
        try:
            found = self._ipr.link_lookup(ifname=self.ifname)
        except _PyrNetlinkError as e:
            raise NetlinkError(f"looking up interface {self.ifname!r}: {e}", e.code) from e
        if not found:
            raise NetlinkError(f"interface {self.ifname!r} not found", errno.ENODEV)
        return int(found[0])

    def addresses(self) -> set[IPv4Interface]:
        """All IPv4 addresses on the interface (primary and secondary), with their prefixes."""
        index = self.ifindex
        try:
            msgs = self._ipr.get_addr(index=index, family=AF_INET)
        except _PyrNetlinkError as e:
            raise self._error("listing addresses", e) from e
        result: set[IPv4Interface] = set()
        for msg in msgs:
            # filter again: older kernels ignore the index in a dump request
            if msg["index"] != index:
                continue
            # IFA_LOCAL is our address; IFA_ADDRESS is the peer's on point-to-point links
            address = msg.get("local") or msg.get("address")
            if address is None:
                continue
            result.add(ipaddress.IPv4Interface(f"{address}/{msg['prefixlen']}"))
        return result

    # -- changes ---------------------------------------------------------------------------

    def add(self, address: IPv4Interface) -> bool:
        """Add ``address``; True if added, False if that exact address/prefix was already there."""
        index = self.ifindex
        try:
            self._ipr.addr(
                "add",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
            )
        except _PyrNetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise self._error(f"adding {address}", e) from e
        return True

    def remove(self, address: IPv4Interface) -> bool:
        """Remove ``address``; True if removed, False if that exact address/prefix was absent."""
        index = self.ifindex
        try:
            self._ipr.addr(
                "del",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
            )
        except _PyrNetlinkError as e:
            if e.code == errno.EADDRNOTAVAIL:
                return False
            raise self._error(f"removing {address}", e) from e
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NetlinkError(f"Netlink({self.ifname!r}) is closed")
        _check_no_running_loop()

    def _error(self, what: str, e: _PyrNetlinkError) -> NetlinkError:
        if e.code == errno.ENODEV:
            return NetlinkError(f"interface {self.ifname!r} not found", e.code)
        return NetlinkError(f"{what} on {self.ifname!r}: {e.args[-1]}", e.code)
