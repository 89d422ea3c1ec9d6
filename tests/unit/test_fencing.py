"""Fencing: the cluster file's fence, the rules that wait for it, the agent's stdin protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path

import pytest

from vigil.core.config import ConfigError, load_text
from vigil.placement.fencing import agent_input, backoff, redact, run_agent
from vigil.placement.rules import Snapshot, decide_one, fences_wanted
from vigil.wire.cluster import ClusterSpec, Fence
from vigil.wire.records import Placement

FENCE = (
    "{agent: fence_ipmilan, options: {ip: 10.0.0.9, username: admin, password: s3cret,"
    " plug: '{node}'}, timeout: 20s}"
)


def spec(fence: str | None = FENCE, where: str = "cluster") -> ClusterSpec:
    cluster_fence = f", fence: {fence}" if fence and where == "cluster" else ""
    node_fence = f", fence: {fence}" if fence and where == "node" else ""
    return load_text(
        f"cluster: {{name: lab{cluster_fence}}}\n"
        f"nodes: [{{name: n1{node_fence}}}, {{name: n2}}, {{name: n3}}]\n"
        "groups:\n"
        "  - {name: db, address: 10.9.0.10/24, preferred: n1, possible: [n2, n3],"
        " app: {command: sleep 9}}\n"
        "  - {name: vip, address: 10.9.0.11/24, preferred: n1, possible: [n2, n3],"
        " on_failover: address-only, app: {command: sleep 9}}\n"
    )


def lost_n1(s: ClusterSpec, **kw: object) -> Snapshot:
    current = {g: Placement(g, "n1", 3, incarnation=2) for g in ("db", "vip")}
    return Snapshot(
        spec=s,
        up={"n2", "n3"},
        current=current,
        held_by={},
        lost_incarnations={"n1": 2},
        incarnations={"n2": 1, "n3": 1},
        **kw,  # type: ignore[arg-type]
    )


def test_the_fence_loads_with_its_timeout_and_the_node_default() -> None:
    s = spec()
    fence = s.fence("n2")
    assert fence is not None and fence.agent == "fence_ipmilan" and fence.timeout == 20.0
    own = spec(where="node")
    assert own.fence("n1") is not None and own.fence("n2") is None
    assert spec(None).fence("n1") is None and s.fence("n9") is None


def test_a_restart_group_of_a_lost_node_waits_for_its_fence() -> None:
    snap = lost_n1(spec())
    held = decide_one(snap, "db")
    assert held is not None
    assert (held.node, held.epoch) == ("n1", 3)  # not decided: only the reason says why
    assert "waiting for it to be fenced" in held.reason
    assert fences_wanted(snap) == {("n1", 2): ["db"]}
    # the reason is written once: the same wait decides nothing more
    again = dataclasses.replace(snap, current={**snap.current, "db": held})
    assert decide_one(again, "db") is None


def test_the_fence_failure_is_the_reason() -> None:
    held = decide_one(lost_n1(spec(), fence_errors={"n1": "fence_ipmilan exited with 1"}), "db")
    assert held is not None and "fence failed: fence_ipmilan exited with 1" in held.reason


def test_once_fenced_the_group_fails_over_as_before() -> None:
    snap = lost_n1(spec(), fenced={("n1", 2)})
    moved = decide_one(snap, "db")
    assert moved is not None and (moved.node, moved.epoch) == ("n2", 4)
    assert fences_wanted(snap) == {}


def test_a_fence_of_another_incarnation_does_not_count() -> None:
    held = decide_one(lost_n1(spec(), fenced={("n1", 1)}), "db")
    assert held is not None and held.node == "n1"


def test_address_only_groups_are_not_held_back() -> None:
    moved = decide_one(lost_n1(spec()), "vip")
    assert moved is not None and moved.node == "n2"


def test_without_a_fence_nothing_changes() -> None:
    snap = lost_n1(spec(None))
    moved = decide_one(snap, "db")
    assert moved is not None and moved.node == "n2" and moved.reason == "node n1 lost"
    assert fences_wanted(snap) == {}


def test_only_the_node_with_a_fence_waits() -> None:
    s = spec(where="node")  # only n1 has one
    current = {"db": Placement("db", "n2", 3, incarnation=1)}
    snap = Snapshot(
        spec=s, up={"n1", "n3"}, current=current, held_by={}, lost_incarnations={"n2": 1}
    )
    moved = decide_one(snap, "db")
    assert moved is not None and moved.node == "n3"


@pytest.mark.parametrize(
    ("fence", "field"),
    [
        ("{agent: 'fence_ipmilan -x'}", "cluster.fence.agent"),
        ("{agent: relative/fence}", "cluster.fence.agent"),
        ("{agent: '/opt/../fence'}", "cluster.fence.agent"),
        ("{agent: fence_x, options: {'a=b': c}}", "cluster.fence.options"),
        ("{agent: fence_x, options: {'a b': c}}", "cluster.fence.options"),
        ("{agent: fence_x, options: {action: reboot}}", "cluster.fence.options.action"),
        ('{agent: fence_x, options: {password: "x\\ny"}}', "cluster.fence.options.password"),
        ("{agent: fence_x, options: {port: 623}}", "cluster.fence.options.port"),
        ("{agent: fence_x, timeout: 0s}", "cluster.fence.timeout"),
        ("{agent: fence_x, timeout: soon}", "cluster.fence.timeout"),
        ("{agent: fence_x, power: off}", "cluster.fence.power"),
        ("{options: {}}", "cluster.fence.agent"),
    ],
)
def test_bad_fences_are_refused_with_the_field(fence: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        spec(fence)
    assert err.value.field == field


def test_a_node_fence_error_names_the_node() -> None:
    with pytest.raises(ConfigError) as err:
        spec("{agent: fence_x, timeout: 1h}", where="node")
    assert err.value.field == "nodes[0].fence.timeout"


def test_the_password_is_never_quoted_back() -> None:
    with pytest.raises(ConfigError) as err:
        spec('{agent: fence_x, options: {password: "hunter2\\r"}}')
    assert "hunter2" not in str(err.value)


def test_the_agent_reads_action_and_options_on_stdin() -> None:
    fence = Fence("fence_x", {"ip": "10.0.0.1", "plug": "{node}"})
    assert agent_input(fence, "n1") == b"action=off\nip=10.0.0.1\nplug=n1\n"
    assert redact("login s3cret failed", Fence("f", {"password": "s3cret"}), "n1") == (
        "login *** failed"
    )
    assert [backoff(n) for n in (1, 2, 3, 9)] == [1.0, 2.0, 4.0, 30.0]


def write_agent(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_run_agent_reports_the_exit_without_secrets(tmp_path: Path) -> None:
    seen = tmp_path / "stdin"
    ok = Fence(write_agent(tmp_path / "ok", f"cat > {seen}"), {"password": "s3cret"})
    assert asyncio.run(run_agent(ok, "n1")) is None
    assert seen.read_text() == "action=off\npassword=s3cret\n"
    bad = Fence(write_agent(tmp_path / "bad", "echo 'bad login s3cret' >&2; exit 3"),
                {"password": "s3cret"})  # fmt: skip
    assert asyncio.run(run_agent(bad, "n1")) == f"{bad.agent} exited with 3: bad login ***"
    slow = Fence(write_agent(tmp_path / "slow", "exec sleep 30"), timeout=0.2)
    assert asyncio.run(run_agent(slow, "n1")) == f"{slow.agent} timed out after 0.2s"
    missing = Fence(str(tmp_path / "none"))
    assert "failed to run" in (asyncio.run(run_agent(missing, "n1")) or "")


def test_the_lab_agent_reads_the_fence_agents_protocol() -> None:
    from vigil.lab.fence_agent import parse

    assert parse("# comment\naction=off\n\nplug = n2\nlab=vx\npassword=a=b\n") == {
        "action": "off",
        "plug": "n2",
        "lab": "vx",
        "password": "a=b",
    }
