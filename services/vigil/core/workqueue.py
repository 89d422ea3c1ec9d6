"""A keyed work queue, pure (controller-runtime's shape): which key to reconcile, and when.

    mark(key) ──> due ──take()──> active ──done(ok)───────────────> idle
    hint(key) ─┘ (now, even while backing off)
                   ^                 │ done(Conflict) ──> due at once
                   │                 │ done(Transient) ─> backing off (exp., jitter, capped)
                   │                 └ done(Permanent) ─> idle until marked again
                   └── backoff over ─┘   a key marked while active is due again when done

One reconcile per key at a time; a failing key backs off alone, the others go on. Time is
passed in (monotonic seconds) so tests need no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .errors import Conflict, Permanent, ReconcileError, Transient

BASE = 0.05  # seconds: the first retry of a transient failure
CAP = 5.0  # seconds: the longest backoff
CONFLICTS = 10  # conflicts in a row before a key is backed off like a transient failure


@dataclass(frozen=True)
class Outcome:
    """What ``done`` decided, for the caller to log: ``retry_in`` None means no retry planned."""

    key: str
    failures: int
    retry_in: float | None
    first: bool  # the first failure of this kind in a row: worth a warning


@dataclass
class WorkQueue:
    base: float = BASE
    cap: float = CAP
    rng: random.Random = field(default_factory=random.Random)
    due: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    active: set[str] = field(default_factory=set)
    again: set[str] = field(default_factory=set)  # marked while active
    backoff: dict[str, float] = field(default_factory=dict)  # key -> not before (monotonic)
    failures: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    permanent: dict[str, str] = field(default_factory=dict)  # key -> the error logged once

    def mark(self, key: str) -> None:
        """Reconcile ``key`` soon: now, or when its backoff ends."""
        if key in self.active:
            self.again.add(key)
        else:
            self.due[key] = None

    def hint(self, key: str) -> None:
        """A change about ``key`` (an event, its record changed): reconcile it soon even while
        it backs off, as controller-runtime's ``Add`` beside ``AddRateLimited``. Its failures
        still count, so if it fails again it backs off as long as it would have. (A failing
        write retried only when its backoff ended started an app 2.7 s after its address came
        back: chaos seed 3.) A resync uses ``mark``, which waits for the backoff."""
        self.backoff.pop(key, None)
        self.mark(key)

    def take(self, now: float, limit: int | None = None) -> list[str]:
        """The keys to reconcile now (at most ``limit``), marked active."""
        out: list[str] = []
        for key in list(self.due):
            if limit is not None and len(out) >= limit:
                break
            if key in self.active or self.backoff.get(key, 0.0) > now:
                continue
            del self.due[key]
            self.backoff.pop(key, None)
            self.active.add(key)
            out.append(key)
        return out

    def next_wake(self, now: float) -> float | None:
        """Seconds until the earliest backing-off key is due; 0 if one is due now; None if
        nothing is waiting."""
        waits = [max(0.0, self.backoff.get(k, 0.0) - now) for k in self.due if k not in self.active]
        return min(waits) if waits else None

    def done(self, key: str, now: float, error: ReconcileError | None = None) -> Outcome:
        self.active.discard(key)
        again = key in self.again
        self.again.discard(key)
        if error is None:
            self.failures.pop(key, None)
            self.conflicts.pop(key, None)
            self.permanent.pop(key, None)
            if again:
                self.due[key] = None
            return Outcome(key, 0, 0.0 if again else None, False)
        if isinstance(error, Conflict):
            n = self.conflicts.get(key, 0) + 1
            self.conflicts[key] = n
            if n < CONFLICTS:
                self.due[key] = None
                return Outcome(key, n, 0.0, False)
            error = Transient(f"{n} compare-and-set conflicts in a row")
        if isinstance(error, Permanent):
            first = self.permanent.get(key) != str(error)
            self.permanent[key] = str(error)
            if again:
                self.due[key] = None
            return Outcome(key, 1, 0.0 if again else None, first)
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        delay = getattr(error, "delay", None)
        if delay is None:
            # exponential, capped, with "equal jitter": between half and all of the step
            step = min(self.cap, self.base * 2 ** (n - 1))
            delay = step * self.rng.uniform(0.5, 1.0)
        self.backoff[key] = now + delay
        self.due[key] = None
        return Outcome(key, n, delay, n == 1)

    def forget(self, key: str) -> None:
        """A key that no longer exists (its group left the cluster file)."""
        self.due.pop(key, None)
        self.again.discard(key)
        for table in (self.backoff, self.failures, self.conflicts, self.permanent):
            table.pop(key, None)
