"""End-to-end fixtures: whole labs (``vigil lab``) in network namespaces, and ways to watch them.

Every lab gets a fresh prefix ``ve2e<random>``, so the tests never touch another engineer's lab.
Teardown always runs (even when a test failed): it resumes anything a test froze, runs
``Lab.down`` and then *asserts* nothing of the lab is left: no namespace with the prefix, no
recorded PID alive.

The plumbing lives in ``vigil.testing`` (shared with the benchmarks); observers, all inside the
lab and bounded in time:

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

import json
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vigil.cli.main import EXAMPLE
from vigil.core.config import load_file
from vigil.lab.lab import CLIENT_IP, Lab, LabState, lab_dir
from vigil.lab.netns import pids_in
from vigil.testing.labs import Prefix, lab_creds_args, lab_teardown
from vigil.testing.netns import (
    IFNAME,
    addresses,
    http_get,
    in_netns,
    leased,
    mac,
    neigh_mac,
    netns_gate,
)
from vigil.testing.observers import ArpWatch, NftMonitor
from vigil.testing.probe import Answer, Probe
from vigil.testing.procs import alive, run, signal_all
from vigil.testing.waiting import wait_until

VIGIL = str(Path(sys.executable).parent / "vigil")  # the console script of this environment
__all__ = ["CLIENT_IP", "IFNAME", "Answer", "in_netns"]


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
        creds = lab_creds_args(self.prefix.name, "reader")
        proc = run([VIGIL, "status", "-o", "json", "--nats", self.url, *creds])
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
        probe = Probe(self.ns("client"), target)
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
