"""The address service's kernel adapters (netlink, gratuitous ARP, lease fence) on a real kernel.

Each test builds its own pair of network namespaces, ``vtk-<random>-a`` and ``-b``, joined by a
veth pair (``veth0`` on both sides), addresses from 10.213.99.0/24 only and no route out; the
fixture always deletes both. The adapters run in-process: the calling thread enters namespace A
with setns(2) around each call that opens a socket or runs ``nft``; sockets and child processes
stay in the namespace they were created in.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from vigil.address.fence import Fence, FenceError
from vigil.address.garp import (
    ETH_P_ARP,
    GarpDropped,
    GarpError,
    build_garp_frames,
    send_gratuitous_arp,
)
from vigil.address.netlink import Netlink, NetlinkError

pytestmark = [pytest.mark.netns, pytest.mark.timeout(30)]

IFNAME = "veth0"  # both ends, each in its own namespace
A_IP = IPv4Interface("10.213.99.1/24")
B_IP = IPv4Interface("10.213.99.2/24")
VIP = IPv4Interface("10.213.99.10/24")
VIP2 = IPv4Interface("10.213.99.11/24")
STALE_MAC = "02:00:00:00:00:01"
CLOSED_PORT = 9  # nothing listens in a fresh namespace: a live address answers with a RST

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# -- namespace plumbing --------------------------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Move the calling thread into netns ``name`` for the block, then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    a_mac: str


@pytest.fixture
def pair(require_netns: None) -> Iterator[Pair]:
    tag = secrets.token_hex(4)
    a, b = f"vtk-{tag}-a", f"vtk-{tag}-b"
    created: list[str] = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            created.append(ns)
        ip("link", "add", f"vtk{tag}a", "type", "veth", "peer", "name", f"vtk{tag}b")
        ip("link", "set", f"vtk{tag}a", "netns", a, "name", IFNAME)
        ip("link", "set", f"vtk{tag}b", "netns", b, "name", IFNAME)
        for ns, addr in ((a, A_IP), (b, B_IP)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", str(addr), "dev", IFNAME)
            ip("-n", ns, "link", "set", IFNAME, "up")
        link = json.loads(ip("-n", a, "-j", "link", "show", IFNAME).stdout)[0]
        wait_until(lambda: _oper_up(a) and _oper_up(b), 5.0, "both veth ends up")
        yield Pair(a, b, str(link["address"]))
    finally:
        for ns in reversed(created):
            ip("netns", "del", ns, check=False)
        # a veth end left in the root namespace (setup failed half way) goes with its peer
        ip("link", "del", f"vtk{tag}a", check=False)


def _oper_up(ns: str) -> bool:
    link = json.loads(ip("-n", ns, "-j", "link", "show", IFNAME).stdout)[0]
    return bool(link.get("operstate") == "UP")


# -- polling and probes --------------------------------------------------------------------


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``pred`` until true; returns the seconds it took. Fails the test at the deadline."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


async def await_until(pred: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    start = time.monotonic()
    while not await pred():
        if time.monotonic() - start > within:
            pytest.fail(f"timed out after {within}s waiting for {what}")
    return time.monotonic() - start


def answers(ns: str, addr: IPv4Address, timeout: float = 0.3) -> bool:
    """Does ``addr`` answer a TCP SYN sent from ``ns``? (A RST is an answer: nothing listens.)"""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(addr), CLOSED_PORT))
        except ConnectionRefusedError:
            return True
        except OSError:  # timeout, or EHOSTUNREACH once ARP resolution gave up
            return False
        return True


def neigh_lladdr(ns: str, addr: IPv4Address) -> str | None:
    out = ip("-n", ns, "-j", "neigh", "show", str(addr), "dev", IFNAME).stdout.strip()
    entries = json.loads(out or "[]")
    return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None


def plant_stale(ns: str, addr: IPv4Address) -> None:
    ip("-n", ns, "neigh", "replace", str(addr), "dev", IFNAME, "lladdr", STALE_MAC, "nud", "stale")
    assert neigh_lladdr(ns, addr) == STALE_MAC


def forget_neigh(ns: str, addr: IPv4Address) -> None:
    ip("-n", ns, "neigh", "del", str(addr), "dev", IFNAME, check=False)


def ip_addrs(ns: str) -> dict[str, dict[str, object]]:
    data = json.loads(ip("-n", ns, "-j", "addr", "show", "dev", IFNAME).stdout)[0]
    return {f"{a['local']}/{a['prefixlen']}": a for a in data["addr_info"] if a["family"] == "inet"}


# -- netlink -------------------------------------------------------------------------------


def test_netlink_add_remove_are_idempotent(pair: Pair) -> None:
    with in_netns(pair.a):
        nl = Netlink(IFNAME)
    with nl:
        index = json.loads(ip("-n", pair.a, "-j", "link", "show", IFNAME).stdout)[0]["ifindex"]
        assert nl.ifindex == index
        assert nl.addresses() == {A_IP}

        assert nl.add(VIP) is True
        assert nl.add(VIP) is False  # EEXIST is "already there", not an error
        assert nl.addresses() == {A_IP, VIP}
        kernel = ip_addrs(pair.a)
        assert kernel[str(VIP)].get("secondary") is True  # the node's own address stays primary
        assert kernel[str(A_IP)].get("secondary") is None

        # another prefix length is another address, for the kernel and for us
        assert nl.remove(IPv4Interface(f"{VIP.ip}/32")) is False
        assert nl.remove(VIP) is True
        assert nl.remove(VIP) is False
        assert nl.addresses() == {A_IP}
        assert set(ip_addrs(pair.a)) == {str(A_IP)}
    with pytest.raises(NetlinkError, match="closed"):
        _ = nl.ifindex
    nl.close()  # closing twice is fine


def test_netlink_missing_interface_is_a_clear_error(pair: Pair) -> None:
    with in_netns(pair.a):
        nl = Netlink("nosuch0")
    with nl:
        with pytest.raises(NetlinkError, match=r"^interface 'nosuch0' not found$"):
            _ = nl.ifindex
        with pytest.raises(NetlinkError, match="not found"):
            nl.add(VIP)
        with pytest.raises(NetlinkError, match="not found"):
            nl.addresses()


# -- gratuitous ARP ------------------------------------------------------------------------


def test_garp_updates_a_stale_neighbour_entry(pair: Pair) -> None:
    plant_stale(pair.b, VIP.ip)
    with in_netns(pair.a):
        send_gratuitous_arp(IFNAME, VIP.ip)
    wait_until(
        lambda: neigh_lladdr(pair.b, VIP.ip) == pair.a_mac, 3.0, "B to learn A's MAC for the VIP"
    )


@pytest.mark.parametrize("form", ["request", "reply"])
def test_either_garp_form_alone_updates_a_linux_neighbour(pair: Pair, form: str) -> None:
    plant_stale(pair.b, VIP.ip)
    request, reply = build_garp_frames(bytes.fromhex(pair.a_mac.replace(":", "")), VIP.ip)
    with in_netns(pair.a):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.sendto(request if form == "request" else reply, (IFNAME, ETH_P_ARP))
    wait_until(
        lambda: neigh_lladdr(pair.b, VIP.ip) == pair.a_mac, 3.0, f"B to honour the {form} form"
    )


def test_garp_errors(pair: Pair) -> None:
    with in_netns(pair.a):
        with pytest.raises(GarpError, match="No such device"):
            send_gratuitous_arp("nosuch0", VIP.ip)
        with pytest.raises(GarpError, match="not an Ethernet interface"):
            send_gratuitous_arp("lo", VIP.ip)
        with pytest.raises(ValueError):
            send_gratuitous_arp(IFNAME, VIP.ip, count=0)


async def add_from_worker_thread(ns: str, address: IPv4Interface) -> None:
    """How async code uses Netlink: from a worker thread (here one started inside ``ns``)."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        with in_netns(ns):  # the worker thread starts here, so it lives in ns
            nl = await loop.run_in_executor(pool, Netlink, IFNAME)
        try:
            assert await loop.run_in_executor(pool, nl.add, address) is True
        finally:
            await loop.run_in_executor(pool, nl.close)


async def test_netlink_on_the_event_loop_thread_is_a_clear_error() -> None:
    with pytest.raises(NetlinkError, match=r"asyncio\.to_thread"):
        Netlink("lo")
    nl = await asyncio.to_thread(Netlink, "lo")
    try:
        with pytest.raises(NetlinkError, match=r"asyncio\.to_thread"):
            nl.addresses()
        with pytest.raises(NetlinkError, match=r"asyncio\.to_thread"):
            nl.close()  # refused, and still open: the to_thread close below really closes it
        assert await asyncio.to_thread(lambda: nl.ifindex) == 1
    finally:
        await asyncio.to_thread(nl.close)


# -- the fence -----------------------------------------------------------------------------


def observe(ns: str, hook: str, rules: list[str]) -> Callable[[], list[int]]:
    """A test-only nft table in ``ns`` counting packets at ``hook``, *after* the fence's chain
    (priority 0 > -500), so it only sees what the fence let through. Returns a reader of the
    per-rule packet counters."""
    body = "\n".join(f"    {rule} counter" for rule in rules)
    script = (
        f"table netdev vtk_observe {{\n  chain {hook} {{\n"
        f'    type filter hook {hook} device "{IFNAME}" priority 0; policy accept;\n'
        f"{body}\n  }}\n}}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True
    )

    def read() -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "netdev", "vtk_observe"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        counts: list[int] = []
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    counts.append(int(expr["counter"]["packets"]))
        return counts

    return read


def answers_from(ns: str, src: IPv4Address, dst: IPv4Address, timeout: float = 0.3) -> bool:
    """Like ``answers`` but the SYN leaves ``ns`` from source address ``src``."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind((str(src), 0))
        sock.settimeout(timeout)
        try:
            sock.connect((str(dst), CLOSED_PORT))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return True


async def test_fence_answers_only_while_leased(pair: Pair) -> None:
    vip = VIP.ip
    fence = Fence(IFNAME)
    with in_netns(pair.a):
        await fence.install([vip])
    await add_from_worker_thread(pair.a, VIP)
    # what gets past A's ingress fence for the VIP: [ARP, IP]; and B's view of A's VIP traffic
    a_in = observe(pair.a, "ingress", [f"arp daddr ip {vip}", f"ip daddr {vip}"])
    b_in = observe(pair.b, "ingress", [f"ip saddr {vip}"])

    # the node's own address is never fenced
    assert answers(pair.b, A_IP.ip)
    # the VIP is configured on A but not leased: its ARP requests die at A's ingress
    assert not answers(pair.b, vip)
    assert a_in() == [0, 0]

    leased_at = 0.0

    async def renewed_then_answers() -> bool:
        nonlocal leased_at
        # B's failed resolution would only retry after retrans_time (1 s), longer than the
        # lease: start a fresh one so the probe runs inside the 300 ms window
        forget_neigh(pair.b, vip)
        leased_at = time.monotonic()  # the TTL counts from the renewal, not from the answer
        with in_netns(pair.a):
            await fence.renew([vip], 300, [vip])
        return answers(pair.b, vip)

    await await_until(renewed_then_answers, 3.0, "an answer from the leased VIP")
    arp_seen, ip_seen = a_in()
    assert arp_seen >= 1 and ip_seen >= 1  # the observer does see what the fence lets in

    # no renewal: once the TTL lapses the kernel stops answering by itself
    wait_until(lambda: not answers(pair.b, vip, timeout=0.2), 3.0, "the lease to lapse")
    assert time.monotonic() - leased_at >= 0.3

    # Each rule on its own. Every check below sends one probe that gets no answer, and looks
    # at the observer counters after it: the probe's own timeout is the only wait.
    # ingress IP: B still has A's MAC cached, so its SYN goes out and A's ingress drops it
    assert neigh_lladdr(pair.b, vip) == pair.a_mac
    before = a_in()
    assert not answers(pair.b, vip)
    assert a_in() == before
    # ingress ARP: B forgets the MAC and asks again; A's ingress drops the requests
    forget_neigh(pair.b, vip)
    assert not answers(pair.b, vip)
    assert a_in() == before
    # egress IP: A's own traffic from the VIP never reaches B
    before_b = b_in()
    assert not answers_from(pair.a, vip, B_IP.ip)
    assert b_in() == before_b
    # egress ARP: A's gratuitous ARP for the VIP is dropped (and the sender is told so). To
    # show B never got it without a fixed sleep, send an unfenced GARP (for A's own address)
    # right behind it on the same wire: once B has taken the second, it has seen the first.
    plant_stale(pair.b, vip)
    plant_stale(pair.b, A_IP.ip)
    with in_netns(pair.a), pytest.raises(GarpDropped):
        send_gratuitous_arp(IFNAME, vip)
    with in_netns(pair.a):
        send_gratuitous_arp(IFNAME, A_IP.ip)
    wait_until(lambda: neigh_lladdr(pair.b, A_IP.ip) == pair.a_mac, 3.0, "the sentinel GARP")
    assert neigh_lladdr(pair.b, vip) == STALE_MAC

    # removing the fence (twice: idempotent) leaves the VIP plainly reachable, both ways
    with in_netns(pair.a):
        await fence.remove()
        await fence.remove()
    forget_neigh(pair.b, vip)
    wait_until(lambda: answers(pair.b, vip), 3.0, "the unfenced VIP to answer")
    assert answers_from(pair.a, vip, B_IP.ip)
    assert b_in()[0] > before_b[0]


async def test_fence_install_resets_leases_and_renew_takes_empty_sets(pair: Pair) -> None:
    vip, vip2 = VIP.ip, VIP2.ip
    fence = Fence(IFNAME, table="vigil_t")
    ip("-n", pair.a, "addr", "add", str(VIP), "dev", IFNAME)
    ip("-n", pair.a, "addr", "add", str(VIP2), "dev", IFNAME)
    with in_netns(pair.a):
        # renew before install: the table is missing, nft's error comes back on one line
        with pytest.raises(FenceError, match="No such file or directory") as err:
            await fence.renew([vip], 1000, [vip])
        assert "\n" not in str(err.value)

        await fence.install([vip, vip2])
        await fence.install([vip, vip2])  # idempotent
        await fence.renew([vip, vip2], 5000, [vip, vip2])
    assert answers(pair.b, vip) and answers(pair.b, vip2)

    # re-installing (an agent restart) starts with nothing leased
    with in_netns(pair.a):
        await fence.install([vip, vip2])
    assert not answers(pair.b, vip) and not answers(pair.b, vip2)

    # lease only one of them; renewal with a long TTL
    forget_neigh(pair.b, vip)
    with in_netns(pair.a):
        await fence.renew([vip], 5000, [vip, vip2])
    wait_until(lambda: answers(pair.b, vip), 3.0, "the leased VIP to answer")
    assert not answers(pair.b, vip2)

    # empty sets: nothing fenced any more, so both answer (without their own lease)
    with in_netns(pair.a):
        await fence.renew([], 300, [])
    forget_neigh(pair.b, vip2)
    wait_until(lambda: answers(pair.b, vip2), 3.0, "an unfenced VIP to answer")
    assert answers(pair.b, vip)

    with in_netns(pair.a):
        await fence.remove()
        with pytest.raises(FenceError):
            await fence.renew([], 300, [])
        await fence.remove()
    out = ip("netns", "exec", pair.a, "nft", "list", "tables").stdout
    assert "vigil_t" not in out


# -- cleanup after a stopped address service -----------------------------------------------


def test_cleanup_removes_fenced_vips_and_the_table(pair: Pair) -> None:
    """`vigil address --cleanup`: the VIPs named in the table go, the node's own address and
    anything else stay, and so does nothing of the table."""
    with in_netns(pair.a):
        asyncio.run(Fence(IFNAME).install([VIP.ip, VIP2.ip]))
    ip("-n", pair.a, "addr", "add", str(VIP), "dev", IFNAME)
    vigil = str(Path(sys.executable).with_name("vigil"))
    run = ["ip", "netns", "exec", pair.a, vigil, "address", "--cleanup"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.splitlines() == [
        f"removed {VIP} from {IFNAME}",
        "deleted nftables table netdev vigil",
    ]
    assert set(ip_addrs(pair.a)) == {str(A_IP)}
    tables = subprocess.run(
        ["ip", "netns", "exec", pair.a, "nft", "list", "tables"], capture_output=True, text=True
    )
    assert "vigil" not in tables.stdout
    again = subprocess.run(run, capture_output=True, text=True, timeout=30, check=True)
    assert again.stdout == ""  # idempotent: nothing left to do
