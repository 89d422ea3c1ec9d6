"""The restart policy, pure: failures and the clock in, "restart after a delay" or "give up" out.

    failure --(fewer than max in window)--> Restart(delay = backoff x 2^(n-1), +-20% jitter)
            --(max reached in window)-----> GiveUp: the group fails over to its next node

Failures older than ``failure_timeout`` are forgotten (Pacemaker's failure-timeout), and so are
failures outside ``window``, so an app that crashes once a day restarts forever, while a flapping
one leaves the node after ``max`` restarts instead of ping-ponging.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from vigil.wire.cluster import Restart as Policy


@dataclass(frozen=True)
class Restart:
    delay: float
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    failures: int
    reason: str


@dataclass
class RestartTracker:
    policy: Policy
    failures: list[float] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    def failed(self, now: float) -> Restart | GiveUp:
        horizon = min(self.policy.window, self.policy.failure_timeout)
        self.failures = [t for t in self.failures if now - t < horizon]
        self.failures.append(now)
        n = len(self.failures)
        if n > self.policy.max:
            return GiveUp(
                n, f"{n} failures within {self.policy.window:g}s (restart.max is {self.policy.max})"
            )
        jitter = self.rng.uniform(0.8, 1.2)
        return Restart(self.policy.backoff * 2 ** (n - 1) * jitter, n)
