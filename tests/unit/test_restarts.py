"""The restart policy with time passed in."""

from __future__ import annotations

import random

import pytest

from vigil.supervisor.restarts import GiveUp, Restart, RestartTracker
from vigil.wire.cluster import Restart as Policy


def tracker(**kw: float) -> RestartTracker:
    return RestartTracker(Policy(**kw), rng=random.Random(1))  # type: ignore[arg-type]


def test_backoff_doubles_with_jitter_then_gives_up() -> None:
    t = tracker(max=3, window=60, backoff=0.2)
    delays = []
    for now in (0.0, 1.0, 2.0):
        decision = t.failed(now)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
    for delay, base in zip(delays, (0.2, 0.4, 0.8), strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert isinstance(t.failed(3.0), GiveUp)


def test_failures_outside_the_window_are_forgotten() -> None:
    t = tracker(max=2, window=10, backoff=0.1)
    for now in (0.0, 20.0, 40.0, 60.0, 80.0):
        decision = t.failed(now)
        assert isinstance(decision, Restart) and decision.attempt == 1


def test_failure_timeout_shorter_than_the_window_wins() -> None:
    t = tracker(max=1, window=600, backoff=0.1, failure_timeout=5)
    assert isinstance(t.failed(0.0), Restart)
    assert isinstance(t.failed(6.0), Restart)
    assert isinstance(t.failed(7.0), GiveUp)


def test_max_zero_fails_over_at_the_first_failure() -> None:
    decision = tracker(max=0).failed(0.0)
    assert isinstance(decision, GiveUp)
    assert "restart.max is 0" in decision.reason


@pytest.mark.parametrize("seed", range(20))
def test_jitter_stays_within_twenty_percent(seed: int) -> None:
    t = RestartTracker(Policy(max=5, backoff=1.0), rng=random.Random(seed))
    decision = t.failed(0.0)
    assert isinstance(decision, Restart)
    assert 0.8 <= decision.delay <= 1.2
