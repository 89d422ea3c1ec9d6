"""Observers inside a lab: ARP claims for an address seen from the client, every fence renewal a
node makes (nft monitor), a FAN client's reports, and which nodes hold an address, sampled."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from vigil.lab.lab import CLIENT_IP

from .lines import JsonLines, Lines
from .netns import IFNAME, addresses, in_netns, mac
from .procs import run
from .waiting import wait_until

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4


@dataclass
class Claim:
    t: float  # time.monotonic()
    mac: str
    op: str  # "reply" or "announce" (a gratuitous ARP)


def _mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class ArpWatch:
    """Who answers ARP for ``vip``, seen from the client: a who-has every 10 ms, and every ARP
    frame whose sender address is the VIP recorded with the sender's MAC."""

    def __init__(self, ns: str, vip: str, interval: float = 0.01, duration: float = 240.0) -> None:
        self.vip = IPv4Address(vip)
        self.interval = interval
        self.claims: list[Claim] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + duration  # bounded by design
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind((IFNAME, ETH_P_ARP))
        own = _mac_bytes(mac(ns))
        self.request = (
            b"\xff" * 6
            + own
            + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + own
            + IPv4Address(CLIENT_IP).packed
            + b"\x00" * 6
            + self.vip.packed
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.sock:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                self.sock.send(self.request)
                next_send = time.monotonic() + self.interval
                while (left := next_send - time.monotonic()) > 0:
                    self.sock.settimeout(left)
                    try:
                        frame, addr = self.sock.recvfrom(2048)
                    except TimeoutError:
                        break
                    seen = time.monotonic()
                    if addr[2] == PACKET_OUTGOING or len(frame) < 42:
                        continue
                    op = struct.unpack("!H", frame[20:22])[0]
                    if frame[28:32] == self.vip.packed and op in (1, 2):
                        claim = Claim(
                            seen, _mac_text(frame[22:28]), "reply" if op == 2 else "announce"
                        )
                        with self.lock:
                            self.claims.append(claim)

    def by(self, who: str, since: float = 0.0) -> list[Claim]:
        with self.lock:
            return [c for c in self.claims if c.mac == who and c.t >= since]

    def macs(self, since: float = 0.0) -> set[str]:
        with self.lock:
            return {c.mac for c in self.claims if c.t >= since}

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


class NftMonitor:
    """``nft monitor new elements`` in a namespace: every element a node adds to its sets."""

    def __init__(self, ns: str, duration: float = 120.0) -> None:
        self.ns = ns
        argv = ["timeout", str(duration), "stdbuf", "-oL"]  # nft buffers its output into a pipe
        argv += ["ip", "netns", "exec", ns, "nft", "monitor", "new", "elements"]
        self._lines = Lines(argv, str.strip, stderr=subprocess.STDOUT)

    @property
    def lines(self) -> list[str]:
        return self._lines.snapshot()

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Return once the monitor reports changes: poke a sentinel set of our own in the
        namespace until the monitor shows it (it may not have subscribed yet)."""
        nft = ["ip", "netns", "exec", self.ns, "nft"]
        table = "inet ve2e_sentinel"
        run(
            [*nft, "-f", "-"], input=f"add table {table}\nadd set {table} s {{ type ipv4_addr; }}\n"
        )
        try:
            element = "s { 10.213.0.1 }"
            poke = f"add element {table} {element}\ndelete element {table} {element}\n"

            def seen() -> bool:
                run([*nft, "-f", "-"], input=poke)
                return any("ve2e_sentinel" in ln for ln in list(self.lines))

            wait_until(seen, timeout, "nft monitor to report changes", interval=0.05)
        finally:
            run([*nft, "delete", "table", *table.split()])

    def leases_of(self, vip: str) -> list[str]:
        return [ln for ln in list(self.lines) if " leased " in ln and f"{{ {vip} " in ln]

    def stop(self) -> None:
        self._lines.stop()


class ServiceWatcher:
    """A FAN client (``vigil.client.ServiceClient`` for ``service``, ``vigil.testing.fanclient``)
    run in the namespace ``netns`` with ``env``; its reports collected."""

    def __init__(
        self,
        netns: str,
        url: str,
        service: str,
        env: dict[str, str],
        stderr: Path,
        duration: float = 300.0,
    ) -> None:
        self.service = service
        self.stderr = stderr.open("w")
        argv = ["ip", "netns", "exec", netns, "env", *(f"{k}={v}" for k, v in env.items())]
        argv += [sys.executable, "-m", "vigil.testing.fanclient", url, service, str(duration)]
        self.lines: JsonLines[dict[str, Any]] = JsonLines(argv, dict, stderr=self.stderr)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.lines.snapshot() if r["kind"] == kind]

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        return wait_until(
            lambda: next(iter(self.of("ready")), None),
            timeout,
            f"the ServiceClient for {self.service} to start",
            interval=0.05,
        )

    def wait_event(self, timeout: float, **fields: Any) -> dict[str, Any]:
        """The first event record whose event has ``fields``."""

        def find() -> dict[str, Any] | None:
            return next(
                (
                    r
                    for r in self.of("event")
                    if all(r["event"].get(k) == v for k, v in fields.items())
                ),
                None,
            )

        return wait_until(find, timeout, f"the ServiceClient to see {fields}", interval=0.05)

    def wait_served_after(self, event: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """The GET the client made with the endpoint it got right after ``event``."""
        return wait_until(
            lambda: next(
                (
                    r
                    for r in self.of("served")
                    if r["after_seq"] == event["seq"] and r["after_source"] == event["source"]
                ),
                None,
            ),
            timeout,
            "the ServiceClient to try the endpoint it got after the event",
            interval=0.05,
        )

    def stop(self) -> None:
        self.lines.stop()
        self.stderr.close()


class AddressSampler:
    """Samples which nodes hold ``vip`` (``namespaces``: node -> its namespace, in the order
    read), over and over, until stopped. Each sample reads the nodes one after the other: put
    the node that *acquires* first. Then a sample seeing the address on both is proof of an
    overlap (the acquiring node does not let go in between), and a sample seeing it on none is a
    moment without a holder."""

    def __init__(self, vip: str, namespaces: dict[str, str]) -> None:
        self.vip = vip
        self.namespaces = namespaces
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded by design
        while not self.stopping.is_set() and time.monotonic() < deadline:
            held = tuple(n for n, ns in self.namespaces.items() if self.vip in addresses(ns))
            self.samples.append((time.time(), held))
            time.sleep(0.005)

    def overlaps(self) -> list[tuple[float, tuple[str, ...]]]:
        return [s for s in self.samples if len(s[1]) > 1]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
