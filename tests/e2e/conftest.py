"""End-to-end fixtures: whole labs (``vigil lab``) in network namespaces, and ways to watch them.

Every lab is driven by ``vigil.testing.lab.LabDriver`` on a fresh prefix (``ve2e<random>`` here),
so the tests never touch another engineer's lab. Teardown always runs (even when a test failed):
it resumes anything a test froze, runs ``Lab.down`` and then *asserts* nothing of the lab is
left: no namespace with the prefix, no recorded PID alive.

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

from collections.abc import Iterator

import pytest

from vigil.cli.main import EXAMPLE
from vigil.core.config import load_file
from vigil.lab.lab import CLIENT_IP
from vigil.testing.lab import VIGIL, LabDriver, driven_lab
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
from vigil.testing.probe import Answer
from vigil.testing.procs import alive, run
from vigil.testing.waiting import wait_until

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


# -- the lab -------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def lab_driver(request: pytest.FixtureRequest) -> Iterator[LabDriver]:
    """A driver on a fresh prefix, no lab up yet; whatever lab runs under it is torn down and
    checked at the end. Its logs (``/run/vigil/<prefix>``) are kept only when a test of the
    class failed."""
    with driven_lab("ve2e", failed=lambda: getattr(request.node, "_failed_step", None)) as drv:
        yield drv


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
def lab(lab_driver: LabDriver) -> LabDriver:
    """A fresh lab of examples/lab.yaml (three nodes; web1 n1 -> [n2, n3], web2 n2 -> [n3, n1]),
    every group up on its preferred node."""
    lab_driver.up(load_file(EXAMPLE))
    return lab_driver
