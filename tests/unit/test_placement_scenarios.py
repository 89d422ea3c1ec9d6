"""Golden placement scenarios, in the spirit of Pacemaker's scheduler regression suite.

Each ``tests/scenarios/placement/*.yaml`` is a readable cluster state (the file, the live nodes,
the current placements) and the decisions expected, one line each.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil.core.config import load_data
from vigil.placement.rules import Snapshot, decide
from vigil.wire.records import Intent, Placement

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios" / "placement").glob("*.yaml"))


def render(p: Placement) -> str:
    return f"{p.group} -> {p.node or 'nowhere'} (epoch {p.epoch}): {p.reason}"


def snapshot(raw: dict[str, Any]) -> Snapshot:
    return Snapshot(
        spec=load_data({k: raw[k] for k in ("cluster", "nodes", "groups")}),
        up=set(raw.get("up", [])),
        current={
            g: Placement(
                g,
                c.get("node"),
                c["epoch"],
                banned=c.get("banned", {}),
                blocked_by=c.get("blocked_by"),
                moving_to=c.get("moving_to"),
                switchover_id=c.get("switchover_id", 0),
                switching=c.get("switching", True),
                enable_id=c.get("enable_id", 0),
            )
            for g, c in (raw.get("current") or {}).items()
        },
        held_by={g: set(nodes) for g, nodes in (raw.get("held_by") or {}).items()},
        settled=raw.get("settled", True),
        now=raw.get("now", 0.0),
        intents={g: Intent(g, **i) for g, i in (raw.get("intents") or {}).items()},
        up_since=raw.get("up_since") or {},
    )


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 10


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    assert raw.get("summary"), f"{path.name}: every scenario says what it is about"
    got = [render(p) for p in decide(snapshot(raw))]
    assert got == raw["expect"], raw["summary"]


def test_decisions_reach_a_fixed_point() -> None:
    """Applying the decisions and deciding again settles within two rounds (a release, then a
    placement): no ping-pong."""
    for path in SCENARIOS:
        snap = snapshot(yaml.safe_load(path.read_text()))
        current = dict(snap.current)
        for _ in range(2):
            step = dataclasses.replace(snap, current=current, held_by={})
            for p in decide(step):
                current[p.group] = p
        again = dataclasses.replace(snap, current=current, held_by={})
        assert decide(again) == [], path.name
