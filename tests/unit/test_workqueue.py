"""The keyed work queue, with time passed in: no clock, no sleeping."""

from __future__ import annotations

import random

from nats.js.errors import KeyWrongLastSequenceError

from vigil.core.errors import Conflict, Permanent, Transient, classify
from vigil.core.workqueue import CAP, CONFLICTS, WorkQueue


def queue() -> WorkQueue:
    return WorkQueue(base=0.1, cap=2.0, rng=random.Random(7))


def test_a_marked_key_is_taken_once_and_marking_twice_is_one_reconcile() -> None:
    q = queue()
    q.mark("g1")
    q.mark("g1")
    assert q.take(0.0) == ["g1"]
    assert q.take(0.0) == []
    q.done("g1", 0.0)
    assert q.take(0.0) == []


def test_one_reconcile_per_key_at_a_time_and_a_mark_meanwhile_runs_it_again() -> None:
    q = queue()
    q.mark("g1")
    assert q.take(0.0) == ["g1"]
    q.mark("g1")  # changed while it reconciles
    assert q.take(0.0) == []  # not twice at once
    q.done("g1", 0.0)
    assert q.take(0.0) == ["g1"]


def test_a_failing_key_backs_off_alone() -> None:
    q = queue()
    q.mark("bad")
    q.mark("good")
    assert q.take(0.0) == ["bad", "good"]
    out = q.done("bad", 0.0, Transient("bus down"))
    q.done("good", 0.0)
    assert out.first and out.retry_in is not None and 0.05 <= out.retry_in <= 0.1
    q.mark("good")
    q.mark("bad")  # an event does not cut the backoff short
    assert q.take(0.01) == ["good"]
    wake = q.next_wake(0.01)
    assert wake is not None and 0.0 < wake <= 0.1
    assert q.take(0.11) == ["bad"]


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    q = queue()
    now, delays = 0.0, []
    for _ in range(10):
        q.mark("g")
        (key,) = q.take(now + 100)
        out = q.done(key, now, Transient("still down"))
        assert out.retry_in is not None
        delays.append(out.retry_in)
        now += 100
    for n, d in enumerate(delays, start=1):
        step = min(2.0, 0.1 * 2 ** (n - 1))
        assert step / 2 <= d <= step
    assert max(delays) <= 2.0 <= CAP
    assert q.done("other", 0.0).failures == 0  # success clears the count
    q.mark("g")
    q.take(1e6)
    assert q.done("g", 1e6).retry_in is None
    assert "g" not in q.failures


def test_a_conflict_retries_at_once_without_counting_as_a_failure() -> None:
    q = queue()
    q.mark("g")
    q.take(0.0)
    out = q.done("g", 0.0, Conflict("lost the compare-and-set"))
    assert out.retry_in == 0.0 and not out.first
    assert q.take(0.0) == ["g"]
    assert "g" not in q.failures


def test_endless_conflicts_end_up_backing_off() -> None:
    q = queue()
    q.mark("g")
    for _ in range(CONFLICTS - 1):
        assert q.take(0.0) == ["g"]
        q.done("g", 0.0, Conflict("again"))
    assert q.take(0.0) == ["g"]
    out = q.done("g", 0.0, Conflict("again"))
    assert out.retry_in is not None and out.retry_in > 0
    assert q.take(0.0) == []


def test_a_permanent_error_is_reported_once_and_waits_for_a_change() -> None:
    q = queue()
    q.mark("g")
    q.take(0.0)
    assert q.done("g", 0.0, Permanent("bad record")).first
    assert q.take(100.0) == []  # not retried on its own
    q.mark("g")  # the resync, or a change
    q.take(100.0)
    assert not q.done("g", 100.0, Permanent("bad record")).first  # logged once
    q.mark("g")
    q.take(200.0)
    q.done("g", 200.0)
    assert "g" not in q.permanent


def test_forget_drops_a_key_and_its_history() -> None:
    q = queue()
    q.mark("g")
    q.take(0.0)
    q.done("g", 0.0, Transient("x"))
    q.forget("g")
    assert q.take(100.0) == [] and q.next_wake(0.0) is None


def test_take_honours_a_limit_and_next_wake_says_now_when_due() -> None:
    q = queue()
    for k in ("a", "b", "c"):
        q.mark(k)
    assert q.next_wake(0.0) == 0.0
    assert q.take(0.0, limit=2) == ["a", "b"]
    assert q.take(0.0) == ["c"]


def test_nats_errors_are_classified() -> None:
    assert isinstance(classify(KeyWrongLastSequenceError()), Conflict)
    assert isinstance(classify(TimeoutError()), Transient)
    assert isinstance(classify(Permanent("x")), Permanent)
    assert classify(ValueError("a bug")) is None


def test_a_hint_runs_a_backing_off_key_now_and_its_next_backoff_keeps_growing() -> None:
    q = queue()
    q.mark("g1")
    for n in range(4):  # four failures in a row: backing off 0.4-0.8 s
        assert q.take(float(n * 10)) == ["g1"]
        q.done("g1", float(n * 10), Transient("no response from stream"))
    at = 30.0
    q.mark("g1")  # a resync waits for the backoff
    assert q.take(at) == []
    q.hint("g1")  # its address came back: try now
    assert q.take(at) == ["g1"]
    failed = q.done("g1", at, Transient("no response from stream"))
    assert failed.failures == 5 and failed.retry_in is not None and failed.retry_in >= 0.8
