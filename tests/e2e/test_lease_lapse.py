"""A lease lapse, end to end: membership stops answering heartbeats (both replicas held down),
so no node's fence is extended. Each node's kernel stops answering for its addresses, its address
service drops them and records them released (``address_released`` and the record), and its
supervisor stops the app that can no longer be reached. When membership is back, every node gets
a new lease and its groups come back where they were, at the same epoch: nobody was declared
lost (membership gives every node a full lease from its own return first).
"""

from __future__ import annotations

import pytest

from vigil.cli.main import EXAMPLE
from vigil.core.config import load_file
from vigil.testing.events import WaitTimeout
from vigil.testing.lab import driven_lab
from vigil.wire.events import AddressAcquired, AddressReleased, AppStarted, AppStopped, NodeLost

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

DEADLINE = 20.0
REPLICAS = ("membership-1", "membership-2")


def test_a_lapsed_lease_is_announced_released_and_the_app_stops_then_all_comes_back() -> None:
    with driven_lab("vlps") as lab:
        lab.up(load_file(EXAMPLE))
        events = lab.record_events("lapse-test")
        before = lab.wait_group("web1", node="n1", mode="normal", timeout=DEADLINE)

        since = events.mark()
        for role in REPLICAS:
            lab.lab.kill_process(role, restart=False)
        try:
            released, _ = events.wait(
                AddressReleased, DEADLINE, since=since, group="web1", node="n1"
            )
            stopped, _ = events.wait(AppStopped, DEADLINE, since=since, group="web1", node="n1")
        except WaitTimeout:
            print(events.dump("web1"))
            raise
        assert released.index < stopped.index, events.dump("web1")
        assert not lab.node_pids("n1", "vigil.lab.demo_app"), "web1's app still runs on n1"

        back = events.mark()
        for role in REPLICAS:
            lab.lab.start_process(role)
        events.wait(AddressAcquired, DEADLINE, since=back, group="web1", node="n1")
        events.wait(AppStarted, DEADLINE, since=back, group="web1", node="n1")
        after = lab.wait_group("web1", node="n1", mode="normal", timeout=DEADLINE)
        assert after["epoch"] == before["epoch"], "web1 was placed anew"
        assert not events.select(NodeLost, since=since), "a node was declared lost"
