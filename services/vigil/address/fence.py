"""The kernel-enforced lease ("fence"): a node answers for a VIP only while its lease is live.

An nftables ``netdev`` table hooked on the interface (ingress and egress) drops ARP and IPv4 to or
from any address in the ``vips`` set unless that address is also in the ``leased`` set. Elements
of ``leased`` carry millisecond timeouts, so when the agent stops renewing (frozen, partitioned,
crashed) the kernel stops answering for the VIPs by itself once the TTL lapses, whether or not
the addresses are still configured. ``install`` leaves ``leased`` empty: after an agent restart
nothing answers until the agent has renewed its lease.

Every change is one ``nft -f -`` transaction (atomic in the kernel), run in the network namespace
of the calling thread.

One table per interface: give each interface's Fence its own table name.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from ipaddress import IPv4Address

from . import libnft

__all__ = [
    "Fence",
    "FenceError",
    "render_remove",
    "render_renew",
    "render_ruleset",
]

NFT = "nft"
NFT_TIMEOUT_S = 10.0

_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_IFNAME_RE = re.compile(r"[^\s/\"'\\:]{1,15}")  # IFNAMSIZ - 1, and nothing nft would choke on


class FenceError(Exception):
    """An nft transaction failed; the message carries nft's stderr on one line."""


def _check_table(table: str) -> str:
    if not _TABLE_RE.fullmatch(table):
        raise ValueError(f"invalid nftables table name {table!r}")
    return table


def _check_ifname(ifname: str) -> str:
    if not _IFNAME_RE.fullmatch(ifname) or ifname in (".", ".."):
        raise ValueError(f"invalid interface name {ifname!r}")
    return ifname


def _addresses(addresses: Iterable[IPv4Address]) -> list[IPv4Address]:
    """Deduplicated, sorted, and re-parsed (so nothing but dotted quads reaches nft)."""
    return sorted({IPv4Address(a) for a in addresses})


def render_ruleset(ifname: str, table: str, vips: Iterable[IPv4Address]) -> str:
    """The whole ``install`` transaction: (re)create table ``table`` hooked on ``ifname``.

    ``add table`` + ``delete table`` first makes it idempotent: whatever was there (or nothing)
    is replaced atomically by the definition, with ``vips`` filled and ``leased`` empty.
    """
    ifname = _check_ifname(ifname)
    table = _check_table(table)
    vip_list = _addresses(vips)
    elements = f"    elements = {{ {', '.join(str(v) for v in vip_list)} }}\n" if vip_list else ""
    hook = f'device "{ifname}" priority -500; policy accept;'
    return (
        f"add table netdev {table}\n"
        f"delete table netdev {table}\n"
        f"table netdev {table} {{\n"
        f"  set vips {{\n"
        f"    type ipv4_addr\n"
        f"{elements}"
        f"  }}\n"
        f"  set leased {{\n"
        f"    type ipv4_addr\n"
        f"    flags timeout\n"
        f"  }}\n"
        f"  chain ingress {{\n"
        f"    type filter hook ingress {hook}\n"
        f"    arp daddr ip @vips arp daddr ip != @leased drop\n"
        f"    ip daddr @vips ip daddr != @leased drop\n"
        f"  }}\n"
        f"  chain egress {{\n"
        f"    type filter hook egress {hook}\n"
        f"    arp saddr ip @vips arp saddr ip != @leased drop\n"
        f"    ip saddr @vips ip saddr != @leased drop\n"
        f"  }}\n"
        f"}}\n"
    )


def render_renew(
    table: str, leased: Iterable[IPv4Address], ttl_ms: int, vips: Iterable[IPv4Address]
) -> str:
    """The ``renew`` transaction: flush both sets, refill ``vips``, lease ``leased`` for ttl_ms.

    An empty iterable omits its ``add element`` line (nft rejects ``{ }``).
    """
    table = _check_table(table)
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms < 1:
        raise ValueError(f"ttl_ms must be a positive integer, got {ttl_ms!r}")
    lines = [
        f"flush set netdev {table} vips",
        f"flush set netdev {table} leased",
    ]
    vip_list = _addresses(vips)
    if vip_list:
        lines.append(f"add element netdev {table} vips {{ {', '.join(str(v) for v in vip_list)} }}")
    leased_list = _addresses(leased)
    if leased_list:
        elems = ", ".join(f"{a} timeout {ttl_ms}ms" for a in leased_list)
        lines.append(f"add element netdev {table} leased {{ {elems} }}")
    return "\n".join(lines) + "\n"


def render_remove(table: str) -> str:
    """The ``remove`` transaction; ``add`` first so deleting an absent table is not an error."""
    table = _check_table(table)
    return f"add table netdev {table}\ndelete table netdev {table}\n"


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()]
    # drop nft's caret underlines ("^^^^^"), keep the message and the offending line
    return " | ".join(ln for ln in lines if ln and set(ln) - {"^", "~", " "})


class Fence:
    """The lease fence for one interface, in the current network namespace."""

    def __init__(self, ifname: str, table: str = "vigil", *, in_process: bool = True) -> None:
        self.ifname = _check_ifname(ifname)
        self.table = _check_table(table)
        self._in_process = in_process
        self._lib: libnft.LibNft | None = None  # opened on first use: its netlink socket stays
        # in the network namespace it was opened in, which must be the fenced node's

    async def install(self, vips: Iterable[IPv4Address]) -> None:
        """(Re)create the table atomically with ``vips`` filled and ``leased`` empty."""
        await self._nft(render_ruleset(self.ifname, self.table, vips), "install")

    async def renew(
        self, leased: Iterable[IPv4Address], ttl_ms: int, vips: Iterable[IPv4Address]
    ) -> None:
        """Atomically set ``vips`` and lease exactly ``leased`` for ``ttl_ms`` from now."""
        await self._nft(render_renew(self.table, leased, ttl_ms, vips), "renew")

    async def remove(self) -> None:
        """Delete the table if present (idempotent). VIPs are then unfenced."""
        await self._nft(render_remove(self.table), "remove")

    async def _nft(self, script: str, what: str) -> None:
        prefix = f"fence {what} ({self.table} on {self.ifname})"
        if self._in_process and self._lib is None:
            self._lib = libnft.load()
            self._in_process = self._lib is not None
        if self._lib is not None:
            error = self._lib.run(script)
            if error is not None:
                raise FenceError(f"{prefix}: {_one_line(error)}")
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                NFT,
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise FenceError(f"{prefix}: cannot run {NFT!r}: {e}") from e
        try:
            _, stderr = await asyncio.wait_for(
                proc.communicate(script.encode()), timeout=NFT_TIMEOUT_S
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise FenceError(f"{prefix}: nft did not finish in {NFT_TIMEOUT_S:g}s") from None
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            detail = _one_line(stderr.decode(errors="replace")) or "no error output"
            raise FenceError(f"{prefix}: nft exited {proc.returncode}: {detail}")
