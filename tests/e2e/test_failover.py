"""Failover end to end, in a real lab (examples/lab.yaml: n1, n2, n3; web1 n1 -> [n2, n3] with the
demo app, web2 n2 -> [n3, n1]), seen by a real TCP client in the client namespace.

Two stories, each a class with a lab of its own, its tests the steps in order:

- ``TestNodeLoss``: kill n1 (SIGKILL, link down): web1 moves to n2 through the same VIP; revive
  n1: it comes back up and web1 stays on n2 (manual failback), n1's stale VIP goes away; kill n2:
  web1 and web2 both move to n3.
- ``TestFrozenAgent``: SIGSTOP everything of n1, link left up (DESIGN.md section 4's nastiest
  case): the kernel fence alone makes n1 stop answering within the lease, web1 moves to n2, and
  the ARP wire never shows two nodes answering; SIGCONT: n1 must not answer for web1 again.

The safety invariant is checked where it is observable: the VIP on exactly one live node, the dead
or frozen node's fence set empty, and (frozen story) every ARP claim on the wire, moment by moment.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Tools

    from vigil.testing.lab import LabDriver

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

VIP1 = "10.213.0.101"
VIP2 = "10.213.0.102"
PORT = 8080
NODES = ["n1", "n2", "n3"]
FAILOVER_DEADLINE = 15.0  # seconds from the fault until the client is served by the new node
SETTLE_DEADLINE = 10.0  # seconds for status and addresses to follow


def node_state(view: dict[str, Any], node: str) -> str:
    return next(str(n["state"]) for n in view["nodes"] if n["name"] == node)


def group(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in view["groups"] if g["name"] == name)


def on(view: dict[str, Any], name: str, node: str, mode: str) -> bool:
    g = group(view, name)
    return bool(g["node"] == node and g["mode"] == mode)


def up(view: dict[str, Any], *nodes: str) -> bool:
    return all(node_state(view, n) == "up" for n in nodes)


def lost(view: dict[str, Any], *nodes: str) -> bool:
    return all(node_state(view, n) == "lost" for n in nodes)


def watch_placement(lab: LabDriver, seconds: float, name: str, node: str, epoch: int) -> None:
    """Sample ``vigil status`` for ``seconds`` (at least twice): group ``name`` must stay on
    ``node`` at ``epoch`` (no new placement decision) in every sample."""
    samples = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end or samples < 2:
        view = lab.status()
        g = group(view, name)
        assert (g["node"], g["epoch"]) == (node, epoch), f"{name} moved: {view}"
        samples += 1


def app_pids(ns: str, needle: str = "vigil.lab.demo_app") -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    found = []
    for pid in out:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(int(pid))
    return found


# Each class is one scenario on one lab, told in steps: a step starts where the last one ended
# (the state it needs is that state), so the steps run in order inside one test, and the test
# runs alone. ``story`` carries what a step hands to the next (a probe, an epoch).
def tell(
    steps: list[Callable[[LabDriver, dict[str, Any], type[Tools]], None]],
    lab: LabDriver,
    tools: type[Tools],
) -> None:
    story: dict[str, Any] = {}
    for step in steps:
        step(lab, story, tools)


# -- story 1: hard node loss -----------------------------------------------------------------------
class TestNodeLoss:
    @staticmethod
    def client_is_served_by_n1_through_the_vip(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        view = lab.wait_status(
            lambda v: (
                up(v, *NODES) and on(v, "web1", "n1", "normal") and on(v, "web2", "n2", "normal")
            ),
            SETTLE_DEADLINE,
            "all nodes up, web1 on n1 and web2 on n2 (normal)",
        )
        story["epoch"] = group(view, "web1")["epoch"]

        probe = lab.probe(f"{VIP1}:{PORT}")
        story["probe"] = probe
        started = time.time()
        tools.wait_until(lambda: probe.served_by("n1", started), 10.0, "the client served by n1")

        assert lab.holders(VIP1, NODES) == ["n1"]
        assert lab.holders(VIP2, NODES) == ["n2"]
        # the fence is live: each node leases exactly what it holds
        assert tools.leased(lab.ns("n1")) == [VIP1]
        assert tools.leased(lab.ns("n2")) == [VIP2]
        assert tools.leased(lab.ns("n3")) == []

    @staticmethod
    def kill_n1_client_served_by_n2_through_the_same_vip(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        probe = story["probe"]
        killed_at, killed_mono = time.time(), time.monotonic()
        assert lab.kill("n1"), "kill found no process in n1"
        answer = tools.wait_until(
            lambda: probe.served_by("n2", killed_at),
            FAILOVER_DEADLINE,
            "the client to be served by n2 through the VIP",
            since=killed_mono,
        )
        print(f"\nweb1 n1 -> n2: client served by n2 {answer.t - killed_at:.3f}s after the kill")

        # The safety invariant, the moment the client reached n2: the VIP is on exactly one live
        # node, and the dead node's kernel fence has lapsed (it could not answer even if its link
        # came back).
        assert lab.holders(VIP1, ["n2", "n3"]) == ["n2"]
        assert tools.leased(lab.ns("n1")) == [], "n1's fence still leases an address"
        # once n2 answered, nobody else did
        assert probe.servers(killed_at) in (["n2"], ["n1", "n2"])

    @staticmethod
    def status_shows_n1_lost_and_web1_failed_over_to_n2(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        view = lab.wait_status(
            lambda v: lost(v, "n1") and up(v, "n2", "n3") and on(v, "web1", "n2", "failover"),
            SETTLE_DEADLINE,
            "n1 lost, n2 and n3 up, web1 on n2 in failover mode",
        )
        assert group(view, "web1")["epoch"] > story["epoch"]
        assert on(view, "web2", "n2", "normal")
        story["epoch"] = group(view, "web1")["epoch"]

    @staticmethod
    def revived_n1_comes_back_up_web1_stays_on_n2_stale_vip_removed(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        probe = story["probe"]
        n1_mac = tools.mac(lab.ns("n1"))
        assert VIP1 in tools.addresses(lab.ns("n1")), "precondition: the dead n1 still has the VIP"
        arp = lab.arp_watch(VIP1)
        revived_at, revived_mono = time.time(), time.monotonic()
        lab.revive("n1")

        lab.wait_status(lambda v: up(v, *NODES), SETTLE_DEADLINE, "the revived n1 to be up")
        up_at = time.monotonic()
        tools.wait_until(
            lambda: VIP1 not in tools.addresses(lab.ns("n1")),
            SETTLE_DEADLINE,
            "n1 to remove its stale 10.213.0.101",
            since=revived_mono,
        )
        # Manual failback: n1 being up again must not move web1. A placement would react to
        # node-up within milliseconds; watch a few of the services' 1 s resync periods.
        watch_placement(lab, up_at + 2.5 - time.monotonic(), "web1", "n2", story["epoch"])
        lab.wait_status(
            lambda v: on(v, "web1", "n2", "failover"), SETTLE_DEADLINE, "web1 on n2 (failover)"
        )
        arp.stop()
        assert arp.by(n1_mac) == [], "the revived n1 answered ARP for web1's VIP"
        assert arp.macs(), "the ARP watch saw no answer at all for the VIP"
        assert probe.servers(revived_at) == ["n2"]
        assert lab.holders(VIP1, NODES) == ["n2"]
        assert tools.leased(lab.ns("n1")) == []

    @staticmethod
    def kill_n2_moves_web1_and_web2_to_n3(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        probe = story["probe"]
        killed_at, killed_mono = time.time(), time.monotonic()
        assert lab.kill("n2"), "kill found no process in n2"
        answer = tools.wait_until(
            lambda: probe.served_by("n3", killed_at),
            FAILOVER_DEADLINE,
            "the client to be served web1 by n3",
            since=killed_mono,
        )
        print(f"\nweb1 n2 -> n3: client served by n3 {answer.t - killed_at:.3f}s after the kill")
        assert lab.holders(VIP1, ["n1", "n3"]) == ["n3"]
        assert tools.leased(lab.ns("n2")) == [], "n2's fence still leases an address"
        assert probe.servers(killed_at) in (["n3"], ["n2", "n3"])

        lab.wait_status(
            lambda v: (
                lost(v, "n2")
                and up(v, "n1", "n3")
                and on(v, "web1", "n3", "failover")
                and on(v, "web2", "n3", "failover")
            ),
            SETTLE_DEADLINE,
            "n2 lost, web1 and web2 on n3 in failover mode",
        )
        assert lab.holders(VIP2, ["n1", "n3"]) == ["n3"]
        body = tools.wait_until(
            lambda: tools.http_get(lab.ns("client"), VIP2, PORT),
            SETTLE_DEADLINE,
            "web2's app to answer through its VIP",
        )
        assert "Directory listing" in body

    def test_hard_node_loss(self, require_netns: None, lab: LabDriver, tools: type[Tools]) -> None:
        """n1 killed: the client is served by n2 through the same VIP; n1 revived stays out of
        web1's way (its stale VIP removed); n2 killed: web1 and web2 move to n3."""
        tell(
            [
                self.client_is_served_by_n1_through_the_vip,
                self.kill_n1_client_served_by_n2_through_the_same_vip,
                self.status_shows_n1_lost_and_web1_failed_over_to_n2,
                self.revived_n1_comes_back_up_web1_stays_on_n2_stale_vip_removed,
                self.kill_n2_moves_web1_and_web2_to_n3,
            ],
            lab,
            tools,
        )


# -- story 2: a frozen agent -----------------------------------------------------------------------
class TestFrozenAgent:
    @staticmethod
    def frozen_n1_stops_answering_within_its_lease(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        macs = {n: tools.mac(lab.ns(n)) for n in NODES}
        story["macs"] = macs
        probe = lab.probe(f"{VIP1}:{PORT}")
        arp = lab.arp_watch(VIP1)
        story["probe"], story["arp"] = probe, arp
        started = time.time()
        tools.wait_until(lambda: probe.served_by("n1", started), 10.0, "the client served by n1")
        # the ARP watch does see n1's kernel answering (positive control)
        tools.wait_until(lambda: arp.by(macs["n1"]), 5.0, "n1 to answer ARP for the VIP")
        view = lab.wait_status(
            lambda v: up(v, *NODES) and on(v, "web1", "n1", "normal"),
            SETTLE_DEADLINE,
            "all nodes up, web1 on n1 (normal)",
        )
        story["epoch"] = group(view, "web1")["epoch"]

        frozen_at = time.time()
        story["frozen"] = lab.freeze("n1")
        # The fence's bound counts from when the freeze is done: until the last process is
        # stopped, n1's heart may still renew (a slow freeze on a loaded machine).
        frozen_mono = time.monotonic()
        story["frozen_at"], story["frozen_mono"] = frozen_at, frozen_mono
        assert app_pids(lab.ns("n1")), "n1's app should be frozen with the rest"

        # no agent runs on n1 now; only the kernel's own timeout can stop it answering
        tools.wait_until(
            lambda: tools.leased(lab.ns("n1")) == [],
            lab.lease,
            "n1's fence to lapse (within the lease)",
            interval=0.005,
            since=frozen_mono,
        )
        link = tools.run(["ip", "-n", lab.ns("n1"), "-br", "link", "show", "eth0"]).stdout
        assert " UP " in link, f"n1's link should stay up: {link}"
        assert VIP1 in tools.addresses(lab.ns("n1")), "the frozen n1 still has the VIP configured"

    @staticmethod
    def web1_moves_to_n2_and_never_two_nodes_answer_arp(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        probe, arp, macs = story["probe"], story["arp"], story["macs"]
        answer = tools.wait_until(
            lambda: probe.served_by("n2", story["frozen_at"]),
            FAILOVER_DEADLINE,
            "the client to be served by n2",
            since=story["frozen_mono"],
        )
        print(f"\nweb1 frozen n1 -> n2: served by n2 {answer.t - story['frozen_at']:.3f}s later")
        view = lab.wait_status(
            lambda v: lost(v, "n1") and up(v, "n2", "n3") and on(v, "web1", "n2", "failover"),
            SETTLE_DEADLINE,
            "n1 lost, n2 and n3 up, web1 on n2 in failover mode",
        )
        assert group(view, "web1")["epoch"] > story["epoch"]
        story["epoch"] = group(view, "web1")["epoch"]

        n1, n2 = arp.by(macs["n1"]), arp.by(macs["n2"])
        assert n2, "n2 never answered ARP for the VIP"
        assert arp.macs() <= {macs["n1"], macs["n2"]}
        last_n1, first_n2 = max(c.t for c in n1), min(c.t for c in n2)
        assert last_n1 < first_n2, (
            f"n1 still answered ARP {last_n1 - first_n2:.3f}s after n2 had started to"
        )
        assert last_n1 - story["frozen_mono"] <= lab.lease, (
            f"the frozen n1 answered ARP {last_n1 - story['frozen_mono']:.3f}s after it froze"
        )
        tools.wait_until(
            lambda: tools.neigh_mac(lab.ns("client"), VIP1) == macs["n2"],
            5.0,
            "the client's neighbour entry for the VIP to be n2's MAC",
        )
        # still frozen, still fenced, the address still configured: only the fence keeps it quiet
        assert tools.leased(lab.ns("n1")) == []
        assert VIP1 in tools.addresses(lab.ns("n1"))
        assert lab.holders(VIP1, ["n2", "n3"]) == ["n2"]
        assert probe.servers(story["frozen_at"]) in (["n2"], ["n1", "n2"])

    @staticmethod
    def thawed_n1_drops_the_vip_and_web1_stays_on_n2(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        monitor = lab.nft_monitor("n1")
        story["monitor"] = monitor

        thawed_at, thawed_mono = time.time(), time.monotonic()
        story["thawed_at"], story["thawed_mono"] = thawed_at, thawed_mono
        lab.thaw("n1", story["frozen"])

        lab.wait_status(lambda v: up(v, *NODES), SETTLE_DEADLINE, "the thawed n1 to be up")
        up_at = time.monotonic()
        tools.wait_until(
            lambda: VIP1 not in tools.addresses(lab.ns("n1")),
            SETTLE_DEADLINE,
            "the thawed n1 to drop 10.213.0.101",
            since=thawed_mono,
        )
        tools.wait_until(
            lambda: not app_pids(lab.ns("n1")),
            SETTLE_DEADLINE,
            "the thawed n1 to stop web1's app",
            since=thawed_mono,
        )
        watch_placement(lab, up_at + 2.5 - time.monotonic(), "web1", "n2", story["epoch"])
        lab.wait_status(
            lambda v: on(v, "web1", "n2", "failover"), SETTLE_DEADLINE, "web1 on n2 (failover)"
        )
        assert lab.holders(VIP1, NODES) == ["n2"]
        assert tools.leased(lab.ns("n1")) == []
        story["probe"].stop()
        story["arp"].stop()
        monitor.stop()

    @staticmethod
    def thawed_n1_never_answers_for_web1_again(
        lab: LabDriver, story: dict[str, Any], tools: type[Tools]
    ) -> None:
        macs = story["macs"]
        # every fence renewal n1 made after the thaw, for web1's VIP (n2's by now)
        leases = story["monitor"].leases_of(VIP1)
        claims = story["arp"].by(macs["n1"], since=story["thawed_mono"])
        served = story["probe"].served_by("n1", story["thawed_at"])
        problems = []
        if leases:
            problems.append(f"n1 re-leased web1's VIP in its fence: {leases}")
        if claims:
            after = [round(c.t - story["thawed_mono"], 3) for c in claims]
            problems.append(
                f"n1 answered ARP for the VIP {len(claims)} times (s after thaw: {after})"
            )
        if served is not None:
            problems.append(f"n1 served the client {served.t - story['thawed_at']:.3f}s after thaw")
        assert not problems, "the thawed n1 answered for web1 again: " + "; ".join(problems)

    def test_frozen_agent(self, require_netns: None, lab: LabDriver, tools: type[Tools]) -> None:
        """n1 frozen (SIGSTOP): it stops answering within its lease, web1 moves to n2 and never
        do two nodes answer ARP; thawed, n1 drops the VIP and never answers for web1 again."""
        tell(
            [
                self.frozen_n1_stops_answering_within_its_lease,
                self.web1_moves_to_n2_and_never_two_nodes_answer_arp,
                self.thawed_n1_drops_the_vip_and_web1_stays_on_n2,
                self.thawed_n1_never_answers_for_web1_again,
            ],
            lab,
            tools,
        )
