"""End-to-end fixtures: whole labs (``vigil lab``) in network namespaces, and ways to watch them.

Every lab gets a fresh prefix ``ve2e<random>``, so the tests never touch another engineer's lab.
Teardown always runs (even when a test failed): it resumes anything a test froze, runs
``Lab.down`` and then *asserts* nothing of the lab is left: no namespace with the prefix, no
recorded PID alive.

Observers, all inside the lab and bounded in time:

- ``Probe``: the real TCP client (``python -m vigil.lab.probe``) in the client namespace, via
  ``ip netns exec``; one JSON line per attempt, collected by a reader thread.
- ``ArpWatch``: a raw ARP socket in the client namespace that asks "who has VIP?" every 10 ms and
  records every ARP frame that claims the VIP (replies and gratuitous announcements), with the
  claimant's MAC: this is how the tests see *which kernels answer* for an address, moment by
  moment.
- ``NftMonitor``: ``nft monitor`` in a node's namespace, to see every fence renewal the node makes.

Tests wait with deadlines (``wait_until``), never with a bare sleep.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigil.cli.main import EXAMPLE
from vigil.core.config import load_file
from vigil.lab.lab import Lab, LabState, lab_dir
from vigil.lab.netns import pids_in

T = TypeVar("T")

VIGIL = str(Path(sys.executable).parent / "vigil")  # the console script of this environment
CLIENT_IP = "10.213.0.250"
IFNAME = "eth0"  # every lab host's interface
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "incremental: a class whose tests are steps of one story; a failed step skips the rest",
    )


# -- incremental classes (one lab, one story, several steps) -------------------------------------
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Remember on the class which step failed (an expected failure, xfail, does not count)."""
    if (
        call.excinfo is not None
        and call.when in ("setup", "call")
        and call.excinfo.typename not in ("Skipped", "XFailed")
        and item.get_closest_marker("xfail") is None
        and item.parent is not None
    ):
        item.parent._failed_step = item.name  # type: ignore[attr-defined]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "incremental" in item.keywords and item.parent is not None:
        failed = getattr(item.parent, "_failed_step", None)
        if failed is not None:
            pytest.skip(f"an earlier step of this story failed: {failed}")


# -- the gate --------------------------------------------------------------------------------------
def netns_gate() -> None:
    """``require_netns`` (tests/conftest.py) for fixtures wider than one test: a class-scoped lab
    is built before any function-scoped fixture runs, so it must apply the same rule itself."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (CAP_NET_ADMIN) for network namespaces"
    for tool in ("ip", "nft"):
        if reason is None and shutil.which(tool) is None:
            reason = f"needs the '{tool}' command"
    if reason is None:
        return
    if os.environ.get("VIGIL_REQUIRE_NETNS") == "1":
        pytest.fail(f"VIGIL_REQUIRE_NETNS=1 but {reason}")
    pytest.skip(reason)


# -- waiting ---------------------------------------------------------------------------------------
def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.02,
    since: float | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that. Fails the test at the
    deadline (``timeout`` seconds from ``since``, a ``time.monotonic()`` value, default now),
    saying what we waited for."""
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- processes -------------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Is ``pid`` still a running process (a zombie is not)? Reaps it if it is our child."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def run(argv: list[str], timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# -- namespaces ------------------------------------------------------------------------------------
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


# -- observers -------------------------------------------------------------------------------------
@dataclass
class Answer:
    t: float  # the probe's own clock: time.time() when the attempt started
    ok: bool
    body: str
    error: str


class Probe:
    """``python -m vigil.lab.probe`` in the client namespace, collected line by line."""

    def __init__(self, prefix: str, target: str, duration: float = 240.0) -> None:
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                f"{prefix}-client",
                sys.executable,
                "-m",
                "vigil.lab.probe",
                "--target",
                target,
                "--interval",
                "0.02",
                "--timeout",
                "0.1",
                "--duration",
                str(duration),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            raw = json.loads(line)
            answer = Answer(raw["t"], raw["ok"], raw.get("body", ""), raw.get("error", ""))
            with self.lock:
                self.answers.append(answer)

    def since(self, t: float) -> list[Answer]:
        """Attempts started at or after wall-clock time ``t``."""
        with self.lock:
            return [a for a in self.answers if a.t >= t]

    def served_by(self, node: str, since: float) -> Answer | None:
        """The first attempt since ``t`` that ``node`` served."""
        return next(
            (a for a in self.since(since) if a.ok and a.body.startswith(f"served by {node} ")),
            None,
        )

    def servers(self, since: float) -> list[str]:
        """Who served the attempts since ``t``, in order (runs collapsed). An attempt whose
        connection closed before any answer (its server was killed mid-request) names nobody;
        an answer that is not the demo app's counts as its first 40 characters."""
        out: list[str] = []
        for a in self.since(since):
            if a.ok and a.body:
                who = a.body.split()[2] if a.body.startswith("served by ") else a.body[:40]
                if not out or out[-1] != who:
                    out.append(who)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.reader.join(timeout=5)


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
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                "timeout",
                str(duration),
                "stdbuf",
                "-oL",  # nft buffers its output into a pipe; we want each line as it happens
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "monitor",
                "new",
                "elements",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def wait_listening(self, timeout: float = 5.0) -> None:
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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.reader.join(timeout=5)


# -- labs ------------------------------------------------------------------------------------------
@dataclass
class Prefix:
    """A lab prefix of our own; ``pids`` collects process IDs the teardown must see dead."""

    name: str
    pids: set[int] = field(default_factory=set)

    def ns(self, who: str) -> str:
        return f"{self.name}-{who}"

    def namespaces(self) -> list[str]:
        """This lab's namespaces, as ``ip netns list`` shows them."""
        out = run(["ip", "netns", "list"]).stdout
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(f"{self.name}-")]

    def note_pids(self) -> None:
        """Remember every PID the lab recorded and every process in its namespaces."""
        state = LabState.load(self.name)
        if state is not None:
            self.pids.update(p.pid for p in state.procs)
        for ns in self.namespaces():
            self.pids.update(pids_in(ns))


def lab_teardown(prefix: Prefix, keep_logs: bool = True) -> None:
    """Resume, remove, and prove nothing is left; the lab's logs stay only if asked to."""
    prefix.note_pids()
    for ns in prefix.namespaces():  # a frozen (SIGSTOPped) process must not outlive us
        signal_all(pids_in(ns), signal.SIGCONT)
    signal_all(sorted(prefix.pids), signal.SIGCONT)
    Lab(prefix.name).down()
    left = prefix.namespaces()
    assert not left, f"lab {prefix.name} left namespaces behind: {left}"
    survivors = [pid for pid in sorted(prefix.pids) if alive(pid)]
    assert not survivors, f"lab {prefix.name} left processes alive: {survivors}"
    assert LabState.load(prefix.name) is None, "lab state file left behind"
    if not keep_logs:
        shutil.rmtree(lab_dir(prefix.name), ignore_errors=True)


@pytest.fixture(scope="class")
def lab_prefix(request: pytest.FixtureRequest) -> Iterator[Prefix]:
    """A fresh prefix; whatever lab runs under it is torn down and checked at the end. Its logs
    (``/run/vigil/<prefix>``) are kept only when a test of the class failed."""
    netns_gate()
    prefix = Prefix(f"ve2e{secrets.token_hex(3)}")
    try:
        yield prefix
    finally:
        failed = getattr(request.node, "_failed_step", None)
        lab_teardown(prefix, keep_logs=failed is not None)
        if failed is not None:
            print(f"\nlab {prefix.name}: logs kept in {lab_dir(prefix.name)} ({failed} failed)")


@dataclass
class LabRun:
    """A lab built from examples/lab.yaml with the ``Lab`` API, plus ways to look at it."""

    lab: Lab
    state: LabState
    prefix: Prefix
    heartbeat: float
    lease: float
    observers: list[Probe | ArpWatch | NftMonitor] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.state.host_url

    def ns(self, who: str) -> str:
        return self.state.ns(who)

    def status(self) -> dict[str, Any]:
        """``vigil status -o json`` against this lab's door."""
        proc = run([VIGIL, "status", "-o", "json", "--nats", self.url])
        assert proc.returncode == 0, f"vigil status failed: {proc.stderr.strip()}"
        view: dict[str, Any] = json.loads(proc.stdout)
        return view

    def wait_status(
        self, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        last: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            view = self.status()
            last[:] = [view]
            return view if ok(view) else None

        deadline = time.monotonic() + timeout
        while True:
            view = check()
            if view is not None:
                return view
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g}s waiting for {what}; status: {last[0]}")
            time.sleep(0.05)

    def holders(self, address: str, nodes: list[str]) -> list[str]:
        """Which of ``nodes`` have ``address`` on their interface."""
        return [n for n in nodes if address in addresses(self.ns(n))]

    def probe(self, target: str) -> Probe:
        probe = Probe(self.prefix.name, target)
        self.observers.append(probe)
        return probe

    def arp_watch(self, vip: str) -> ArpWatch:
        watch = ArpWatch(self.ns("client"), vip)
        self.observers.append(watch)
        return watch

    def nft_monitor(self, node: str) -> NftMonitor:
        monitor = NftMonitor(self.ns(node))
        self.observers.append(monitor)
        monitor.wait_listening()
        return monitor

    def freeze(self, node: str) -> list[int]:
        """SIGSTOP every process in the node's namespace (link left up); repeat until no new
        process appears (a child forked while we were stopping the others)."""
        stopped: list[int] = []
        while new := [p for p in pids_in(self.ns(node)) if p not in stopped]:
            signal_all(new, signal.SIGSTOP)
            stopped += new
        self.prefix.pids.update(stopped)
        return stopped

    def thaw(self, node: str, pids: list[int]) -> None:
        signal_all(sorted({*pids, *pids_in(self.ns(node))}), signal.SIGCONT)

    def close(self) -> None:
        for observer in self.observers:
            observer.stop()


class Tools:
    """The helpers above, for test modules (which cannot import a conftest reliably)."""

    wait_until = staticmethod(wait_until)
    run = staticmethod(run)
    alive = staticmethod(alive)
    addresses = staticmethod(addresses)
    leased = staticmethod(leased)
    mac = staticmethod(mac)
    neigh_mac = staticmethod(neigh_mac)
    http_get = staticmethod(http_get)
    netns_gate = staticmethod(netns_gate)
    VIGIL = VIGIL


@pytest.fixture(scope="session")
def tools() -> type[Tools]:
    return Tools


@pytest.fixture(scope="class")
def lab(lab_prefix: Prefix) -> Iterator[LabRun]:
    """A fresh lab of examples/lab.yaml (three nodes; web1 n1 -> [n2, n3], web2 n2 -> [n3, n1]),
    every group up on its preferred node."""
    spec = load_file(EXAMPLE)
    the_lab = Lab(lab_prefix.name)
    state = the_lab.up(spec, nats_servers=1)  # one server: speed (test_lab_topology runs 3)
    lab_prefix.note_pids()
    run_ = LabRun(
        the_lab, state, lab_prefix, spec.cluster.timing.heartbeat, spec.cluster.timing.lease
    )
    try:
        yield run_
    finally:
        run_.close()
