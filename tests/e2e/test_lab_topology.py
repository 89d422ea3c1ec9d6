"""The lab runs the production topology, and its fault commands do what they say.

One lab of examples/lab.yaml (web1 n1 -> [n2, n3], web2 n2 -> [n3, n1]) brought up with the
command line and its default topology: three NATS servers in a JetStream cluster (R3), two
membership and two placement replicas, every process under a keeper. The steps, in order:

1. the topology is there: three servers with pids, four replicas, every bucket and the history
   with three copies;
2. with one NATS server held down and one membership replica killed, a node loss still fails
   over (the client is served from the next node), and the killed replica comes back by itself;
3. ``freeze`` stops every process of a node while its kernel still answers on the wire; ``thaw``
   resumes them;
4. ``partition`` cuts the node off the wire with everything still running; ``heal`` reconnects it.

The wire is seen from the client namespace: ARP for the node's own address, and a TCP connect
to a closed port of it (an immediate refusal while the kernel is reachable, silence otherwise).
Teardown (``lab_driver``) proves ``vigil lab down`` leaves no namespace and no process, keepers
included.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import pytest
from helpers import alive, in_netns, report, wait_until
from nats.js.api import StreamInfo

from vigil.core.subjects import Subjects
from vigil.lab.netns import pids_in
from vigil.testing.lab import LabDriver, group_of, lab_credentials, node_state
from vigil.testing.netns import mac
from vigil.testing.observers import ArpWatch

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

N3_IP = "10.213.0.13"  # node n3's own address (third node)


def stopped(pid: int) -> bool:
    """Is ``pid`` stopped (SIGSTOP: state T)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def tcp_answer(ns: str, host: str, port: int = 9, timeout: float = 0.3) -> str:
    """A TCP connect from ``ns``: 'refused' when the host's kernel answered (nothing listens
    there), 'connected', or 'silence' when nothing came back within ``timeout``."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "silence"
    return "connected"


def arp_answers(client: str, node_ns: str, host: str, window: float = 0.5) -> bool:
    """Does ``host``'s kernel (its MAC) answer an ARP who-has asked every 20 ms from ``client``
    within ``window`` seconds?"""
    who = mac(node_ns)
    watch = ArpWatch(client, host, interval=0.02, duration=window + 2)
    try:
        since = time.monotonic()
        deadline = since + window
        while time.monotonic() < deadline:
            if watch.by(who, since):
                return True
            time.sleep(0.02)
        return False
    finally:
        watch.stop()


async def streams_info(prefix: str, urls: list[str]) -> list[StreamInfo]:
    """Every bucket's stream and the history, as the lab's reader sees them (listing every
    stream is no role's right)."""
    s = Subjects()
    options = lab_credentials(prefix, "reader").options(urls)
    nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=1, **options)
    try:
        js = nc.jetstream()
        return [await js.stream_info(n) for n in [*(f"KV_{b}" for b in s.buckets), s.stream]]
    finally:
        await nc.close()


async def stream_leaders(prefix: str, urls: list[str]) -> dict[str, str]:
    """Which server leads each stream (bucket or history)."""
    infos = await streams_info(prefix, urls)
    return {i.config.name: i.cluster.leader for i in infos if i.cluster and i.cluster.leader}


CRITICAL = ("KV_vigil_nodes", "KV_vigil_placement", "KV_vigil_observed")


def a_server_leading(topo: LabDriver, critical: bool) -> str:
    """A NATS server that leads the node records' stream (``critical``), or, else, one that
    leads as few of the compare-and-set buckets as possible (today killing the leader of
    ``KV_vigil_nodes`` stops failovers: see ``test_..._the_nodes_bucket_leader_down``)."""
    leaders = asyncio.run(stream_leaders(topo.name, topo.info()["nats_urls"]))
    if critical:
        return leaders["KV_vigil_nodes"]
    servers = ["nats-1", "nats-2", "nats-3"]
    return min(
        (s for s in servers if s != leaders.get("KV_vigil_nodes")),
        key=lambda s: sum(leaders.get(b) == s for b in CRITICAL),
    )


async def stream_copies(prefix: str, urls: list[str]) -> dict[str, int]:
    infos = await streams_info(prefix, urls)
    return {i.config.name: 1 + len(i.cluster.replicas or []) if i.cluster else 1 for i in infos}


@pytest.fixture(scope="class")
def topo_lab(lab_driver: LabDriver) -> Iterator[LabDriver]:
    proc = lab_driver.up_cli()
    assert "3 NATS server(s)" in proc.stdout, proc.stdout
    yield lab_driver
    lab_driver.prefix.note_pids()


@pytest.mark.incremental
class TestProductionTopology:
    def test_three_nats_servers_two_and_two_replicas_r3(
        self, require_netns: None, topo_lab: LabDriver
    ) -> None:
        now = topo_lab.info()
        assert sorted(now["nats"]) == ["nats-1", "nats-2", "nats-3"]
        roles = ["membership-1", "membership-2", "placement-1", "placement-2"]
        for name in [*now["nats"], *roles, "n1-address", "n1-supervisor"]:
            proc = now["processes"][name]
            assert isinstance(proc["pid"], int) and alive(proc["pid"]), (name, proc)
            assert alive(proc["keeper"]) and proc["pid"] != proc["keeper"], (name, proc)
        assert now["node_states"]["n1"] == {"running": True, "frozen": False, "partitioned": False}
        copies = asyncio.run(stream_copies(topo_lab.name, now["nats_urls"]))
        assert copies and set(copies.values()) == {3}, copies
        assert {"KV_vigil_nodes", "KV_vigil_placement", "VIGIL_EVENTS"} <= set(copies), copies

    def test_node_loss_fails_over_with_a_nats_server_and_a_membership_replica_down(
        self, require_netns: None, topo_lab: LabDriver
    ) -> None:
        probe = topo_lab.probe("10.213.0.101:8080")
        try:
            wait_until(lambda: probe.served_by("n1", 0), 20, "web1 served by n1")
            server = a_server_leading(topo_lab, critical=False)
            topo_lab.lab_cli("kill", "--no-restart", server)
            before = topo_lab.info()["processes"]["membership-1"]
            topo_lab.lab_cli("kill", "membership-1")
            assert not alive(before["pid"])
            t0 = time.time()
            topo_lab.lab_cli("kill", "n1")
            # Generous: a killed server that led a bucket's stream stalls its writes until
            # JetStream elects a new leader (seconds; docs/reliability.md has the numbers).
            served = wait_until(
                lambda: probe.served_by("n2", t0), 90, "web1 served by n2 after n1's loss"
            )
            report("failover with 3 NATS (one down) + 1 of 2 membership", f"{served.t - t0:.3f}s")
        finally:
            probe.stop()

        def restarted() -> dict[str, Any] | None:
            now = topo_lab.info()["processes"]["membership-1"]
            ok = isinstance(now["pid"], int) and now["pid"] != before["pid"] and alive(now["pid"])
            return now if ok else None

        now = wait_until(restarted, 10, "membership-1 restarted by its keeper", interval=0.2)
        assert now["restarts"] >= 1 and now["keeper"] == before["keeper"]
        held = topo_lab.info()["nats"][server]
        assert held["pid"] is None and held["held"] is True, held
        topo_lab.lab_cli("start", server)
        again = topo_lab.info()["nats"][server]
        assert alive(again["pid"]) and again["held"] is False, again
        view = wait_until(
            lambda: (v := topo_lab.status_any_door()) and node_state(v, "n1") == "lost" and v,
            10,
            "status: n1 lost",
            interval=0.2,
        )
        assert group_of(view, "web1")["node"] == "n2", view
        topo_lab.lab_cli("revive", "n1")
        wait_until(
            lambda: node_state(topo_lab.status_any_door(), "n1") == "up",
            30,
            "n1 up again",
            interval=0.2,
        )

    def test_freeze_stops_every_process_and_the_kernel_still_answers(
        self, require_netns: None, topo_lab: LabDriver
    ) -> None:
        client = topo_lab.ns("client")
        assert tcp_answer(client, N3_IP) == "refused"
        topo_lab.lab_cli("freeze", "n3")
        pids = pids_in(topo_lab.ns("n3"))
        assert len(pids) >= 4, pids  # two keepers, the address service, the supervisor
        assert all(stopped(p) for p in pids), [p for p in pids if not stopped(p)]
        assert topo_lab.info()["node_states"]["n3"]["frozen"] is True
        # on the wire: its kernel answers, ARP and TCP, with every process stopped
        assert arp_answers(client, topo_lab.ns("n3"), N3_IP)
        assert tcp_answer(client, N3_IP) == "refused"
        wait_until(
            lambda: node_state(topo_lab.status_any_door(), "n3") == "lost",
            10,
            "membership to declare the frozen n3 lost",
            interval=0.2,
        )
        topo_lab.lab_cli("thaw", "n3")
        assert not [p for p in pids if stopped(p)]
        assert topo_lab.info()["node_states"]["n3"]["frozen"] is False
        wait_until(
            lambda: node_state(topo_lab.status_any_door(), "n3") == "up",
            30,
            "n3 up again after thaw",
            interval=0.2,
        )

    def test_partition_cuts_the_wire_with_everything_running(
        self, require_netns: None, topo_lab: LabDriver
    ) -> None:
        client = topo_lab.ns("client")
        pids = sorted(pids_in(topo_lab.ns("n3")))
        topo_lab.lab_cli("partition", "n3")
        assert topo_lab.info()["node_states"]["n3"]["partitioned"] is True
        assert tcp_answer(client, N3_IP) == "silence"
        assert not arp_answers(client, topo_lab.ns("n3"), N3_IP)
        wait_until(
            lambda: node_state(topo_lab.status_any_door(), "n3") == "lost",
            10,
            "membership to declare the partitioned n3 lost",
            interval=0.2,
        )
        # everything kept running: the same processes, none stopped
        still = sorted(pids_in(topo_lab.ns("n3")))
        assert set(pids) <= set(still), (pids, still)
        assert not [p for p in still if stopped(p)]
        topo_lab.lab_cli("heal", "n3")
        assert topo_lab.info()["node_states"]["n3"]["partitioned"] is False
        wait_until(lambda: tcp_answer(client, N3_IP) == "refused", 5, "n3 reachable after heal")
        wait_until(
            lambda: node_state(topo_lab.status_any_door(), "n3") == "up",
            30,
            "n3 up again after heal",
            interval=0.2,
        )

    def test_node_loss_fails_over_with_the_nodes_bucket_leader_down(
        self, require_netns: None, topo_lab: LabDriver
    ) -> None:
        """The last step: it may leave the cluster broken (a dead node never declared lost)."""
        view = topo_lab.status_any_door()
        victim = group_of(view, "web1")["node"]
        survivor = next(n for n in ("n1", "n2", "n3") if n != victim and n != "n1")
        probe = topo_lab.probe("10.213.0.101:8080")
        try:
            wait_until(lambda: probe.served_by(victim, 0), 20, f"web1 served by {victim}")
            topo_lab.lab_cli("kill", "--no-restart", a_server_leading(topo_lab, True))
            t0 = time.time()
            topo_lab.lab_cli("kill", victim)
            served = wait_until(
                lambda: probe.served_by(survivor, t0), 30, f"web1 served by {survivor}"
            )
            report("failover with the nodes bucket's leader down", f"{served.t - t0:.3f}s")
        finally:
            probe.stop()
