"""``make chaos``'s schedules are a pure function of the seed: a failure is replayed by it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives at the root

from bench.chaos import KINDS, schedule

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
