"""Power fencing end to end (issue 10, item 5): a partitioned node is powered off before its
restart group runs anywhere else, so the app never runs twice.

The lab of examples/lab.yaml with ``cluster.fence`` = the lab's own agent, ``fence_vigil_lab``
(the ``fence-agents`` interface; ``action=off`` kills every process of the node's namespace by
PID and takes its link down). n1 is partitioned: its port on the bridge goes down with every
process still running, so without a fence web1's app would keep running on n1, unreachable,
while n2 starts another (docs/safety.md, "Power fencing"). With the fence, placement runs the
agent, waits for it, and only then places web1 on n2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from vigil.cli.main import EXAMPLE
from vigil.core.config import load_file
from vigil.testing.events import WaitTimeout
from vigil.testing.lab import driven_lab
from vigil.testing.waiting import wait_until
from vigil.wire.cluster import ClusterSpec, Fence
from vigil.wire.events import AppStarted, NodeFenced, NodeLost

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

DEADLINE = 30.0  # seconds for each step (fences and failovers take well under this)
APP = "vigil.lab.demo_app"  # web1's app


def fenced_spec(prefix: str) -> ClusterSpec:
    agent = Path(sys.executable).with_name("fence_vigil_lab")  # installed beside vigil
    assert agent.exists(), f"{agent} is not installed (pip install -e .)"
    spec = load_file(EXAMPLE)
    fence = Fence(agent=str(agent), options={"plug": "{node}", "lab": prefix}, timeout=20.0)
    return msgspec.structs.replace(spec, cluster=msgspec.structs.replace(spec.cluster, fence=fence))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_partitioned_node_is_powered_off_before_its_group_restarts_elsewhere() -> None:
    with driven_lab("vfnc") as lab:
        lab.up(fenced_spec(lab.name))
        events = lab.record_events("fence-test")
        lab.wait_group("web1", node="n1", mode="normal", timeout=DEADLINE)
        before = lab.node_pids("n1", APP)
        assert before, "web1's app is not running on n1"

        since = events.mark()
        lab.lab.partition("n1")
        try:
            lost, _ = events.wait(NodeLost, DEADLINE, since=since, node="n1")
            fenced, _ = events.wait(NodeFenced, DEADLINE, since=since, node="n1")
            started, _ = events.wait(AppStarted, DEADLINE, since=since, group="web1", node="n2")
        except WaitTimeout:
            print(events.dump())
            raise
        # the order the product promises: lost, then off, then the app elsewhere
        assert lost.index < fenced.index < started.index, events.dump("web1")
        # the agent powered n1 off: its app, and everything else of n1, is gone
        assert not [pid for pid in before if alive(pid)], "web1's app still runs on n1"
        assert not lab.node_pids("n1", ""), "n1 still has processes after its fence"
        url = f"http://{lab.vip('web1')}:8080/"
        wait_until(
            lambda: (lab.curl(url) or "").startswith("served by n2 group web1"),
            DEADLINE,
            "the client to be served web1 by n2",
        )
        lab.wait_group("web1", node="n2", mode="failover", timeout=DEADLINE)
        lab.wait_nodes(timeout=DEADLINE, n1="lost")

        # Power back on (the agent's ``on`` is ``vigil lab revive``) and mend the link: n1
        # rejoins as a new incarnation and web1 stays where it runs (manual failback).
        lab.lab.heal("n1")
        lab.revive("n1")
        lab.wait_nodes(timeout=DEADLINE, n1="up", n2="up", n3="up")
        after = lab.group("web1")
        assert (after["node"], after["mode"]) == ("n2", "failover")
        assert not lab.node_pids("n1", APP), "n1 started web1's app again"
