"""``make chaos``'s schedules are a pure function of the seed: a failure is replayed by it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives at the root

from bench.chaos import KINDS, Fault, Outcome, report, schedule

NODES = ["n1", "n2", "n3", "n4"]


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert schedule(7, NODES) == schedule(7, NODES)
    assert any(schedule(s, NODES) != schedule(7, NODES) for s in range(8, 12))


def test_one_to_three_faults_on_distinct_targets_of_every_kind() -> None:
    seen: set[str] = set()
    for seed in range(300):
        faults = schedule(seed, NODES)
        assert 1 <= len(faults) <= 3
        assert len({f.target for f in faults}) == len(faults)
        assert all(0.5 <= f.length <= 3.0 and f.start >= 0 for f in faults)
        seen.update(f.kind for f in faults)
    assert seen == set(KINDS)


def test_the_report_counts_late_schedules_apart_for_nats_faults() -> None:
    nats, node = Fault("nats", "nats-1", 0, 1), Fault("node-kill", "n1", 0, 1)
    outcomes = [
        Outcome(1, [nats], converged_s=7.5),
        Outcome(2, [node, nats], converged_s=2.0),
        Outcome(3, [node], converged_s=0.8),
        Outcome(4, [node], converged_s=None, stuck="web1 halted"),
    ]
    text = report(outcomes, 1, 5.0, {})
    assert "| schedules not converged within 5 s of the last heal | 2 |" in text
    assert "| schedules with a NATS server down: run, late, p50 / p99 / max | 2, 1," in text
    assert "| schedules without: run, late, p50 / p99 / max | 2, 1, 0.80 / 0.80 / 0.80 s |" in text
    assert "- seed 1: nats nats-1 @0.0s for 1.0s -> converged in 7.5 s" in text
    assert (
        "- seed 4: node-kill n1 @0.0s for 1.0s -> converged never (30 s), last wrong: web1 halted"
        in text
    )
