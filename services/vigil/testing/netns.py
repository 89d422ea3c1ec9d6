"""Looking into network namespaces: addresses, the fence set, MACs, one HTTP GET."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
from collections.abc import Iterator

from .procs import run

IFNAME = "eth0"  # every lab host's interface
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Move the calling thread into netns ``name`` for the block, then back. Sockets opened in
    the block stay in ``name``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {name}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)


def addresses(ns: str) -> set[str]:
    """The IPv4 addresses on ``eth0`` in ``ns`` (what ``ip -n NS addr`` shows)."""
    out = run(["ip", "-n", ns, "-j", "addr", "show", "dev", IFNAME]).stdout
    return {
        a["local"]
        for link in json.loads(out or "[]")
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    }


def leased(ns: str) -> list[str] | None:
    """The elements of the node's fence set ``leased`` (``nft list set netdev vigil leased``);
    None when the fence table is not there."""
    proc = run(["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "netdev", "vigil", "leased"])
    if proc.returncode != 0:
        return None
    for item in json.loads(proc.stdout)["nftables"]:
        if "set" in item:
            elems = item["set"].get("elem", [])
            return [
                e["elem"]["val"] if isinstance(e, dict) and "elem" in e else str(e) for e in elems
            ]
    return []


def mac(ns: str) -> str:
    out = run(["ip", "-n", ns, "-j", "link", "show", IFNAME]).stdout
    return str(json.loads(out)[0]["address"])


def neigh_mac(ns: str, address: str) -> str | None:
    out = run(["ip", "-n", ns, "-j", "neigh", "show", address, "dev", IFNAME]).stdout.strip()
    entries = json.loads(out or "[]")
    return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None


def http_get(ns: str, host: str, port: int, timeout: float = 1.0) -> str | None:
    """One HTTP GET from inside ``ns``: the response body, or None when nothing answered."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            return None
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def netns_problem(tools: tuple[str, ...] = ("ip", "nft")) -> str | None:
    """None when we can build network namespaces here (and have ``tools``), else why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (make deps)"
    return None


def netns_gate(tools: tuple[str, ...] = ("ip", "nft")) -> None:
    """Skip the test when namespaces cannot be built here, but fail it when
    ``VIGIL_REQUIRE_NETNS=1`` (CI): e2e tests never skip silently there. Usable from fixtures
    wider than one test (a class-scoped lab is built before function-scoped fixtures run)."""
    import pytest  # only the test runner calls this; the package does not depend on pytest

    reason = netns_problem(tools)
    if reason is None:
        return
    if os.environ.get("VIGIL_REQUIRE_NETNS") == "1":
        pytest.fail(f"VIGIL_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)
