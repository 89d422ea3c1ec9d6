"""Gratuitous ARP, hand-built and sent on an AF_PACKET raw socket (no arping needed).

Why two forms. After a VIP moves, every neighbour that cached the old node's MAC must learn the
new one. Implementations disagree on which gratuitous ARP they honour, so we send both, as
``arping -U`` (request) and ``arping -A`` (reply) do:

* the **request** form (op 1, sender IP == target IP, target MAC zero, RFC 5227 "ARP
  announcement") is what most hosts and switches expect;
* the **reply** form (op 2, sender IP == target IP, target MAC == sender MAC) is what some
  routers and older stacks honour instead.

Linux updates an *existing* neighbour entry on either: ``arp_process`` overrides the cached MAC
(even inside the ``locktime`` window) when the packet is a gratuitous ARP, and for the reply form
it only counts as gratuitous when target MAC == sender MAC, which is why we set it so. Neither
form creates a new entry unless ``arp_accept`` is set, which is fine: a host that has no entry
will ARP for the VIP and get the new node's answer.

The frame goes out through the normal egress path, so the lease fence (``fence.py``) drops it
when the VIP is not leased. That is intended: an unleased node must not advertise the VIP.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address

__all__ = ["GarpDropped", "GarpError", "build_garp_frames", "send_gratuitous_arp"]

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
_MIN_FRAME = 60  # Ethernet minimum without FCS; not every driver pads short raw frames


class GarpError(Exception):
    """The gratuitous ARP could not be sent (no such interface, not Ethernet, interface down...)."""


class GarpDropped(GarpError):
    """The kernel dropped every frame on egress, typically the fence: the address is not leased."""


def build_garp_frames(mac: bytes, address: IPv4Address) -> tuple[bytes, bytes]:
    """The two gratuitous ARP Ethernet frames (request form, reply form) for ``address``."""
    if len(mac) != 6:
        raise ValueError(f"expected a 6-byte MAC address, got {len(mac)} bytes")
    ip = IPv4Address(address).packed

    def frame(op: int, target_mac: bytes) -> bytes:
        eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
        arp = struct.pack("!HHBBH", ARPHRD_ETHER, ETH_P_IP, 6, 4, op)
        arp += mac + ip + target_mac + ip
        return (eth + arp).ljust(_MIN_FRAME, b"\x00")

    return frame(ARPOP_REQUEST, ZERO_MAC), frame(ARPOP_REPLY, mac)


def send_gratuitous_arp(ifname: str, address: IPv4Address, count: int = 1) -> None:
    """Broadcast ``count`` rounds of gratuitous ARP (request form, then reply form) on ``ifname``.

    The rounds go out back to back: this function never sleeps (it runs on the agent's event
    loop). Callers that want spaced repeats call it again later. Needs CAP_NET_RAW.

    Raises GarpDropped if the kernel dropped every frame on the way out (ENOBUFS: the fence's
    egress rule when ``address`` is not leased, or a full qdisc), GarpError on anything else.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    what = f"gratuitous ARP for {address} on {ifname!r}"
    sent = 0
    try:
        # protocol 0: this socket receives nothing, it only sends
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind((ifname, 0))
            _, _, _, hatype, mac = sock.getsockname()
            if hatype != ARPHRD_ETHER or len(mac) != 6:
                raise GarpError(
                    f"{what}: not an Ethernet interface (hardware type {hatype}, "
                    f"address {mac.hex(':') or 'none'})"
                )
            frames = build_garp_frames(mac, address)
            # an explicit destination sets skb->protocol to ARP, which nftables' "arp ..."
            # matches in the netdev family depend on (the fence must see these frames)
            dest = (ifname, ETH_P_ARP, 0, ARPHRD_ETHER, BROADCAST_MAC)
            for _ in range(count):
                for frame in frames:
                    try:
                        sock.sendto(frame, dest)
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:
                            raise
                    else:
                        sent += 1
    except OSError as e:
        raise GarpError(f"{what}: {e.strerror or e}") from e
    if sent == 0:
        raise GarpDropped(
            f"{what}: every frame was dropped on the way out (ENOBUFS); "
            "is the address fenced (not leased), or the queue full?"
        )
