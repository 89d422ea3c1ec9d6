"""Node leases, pure: heartbeats and the clock in, node joined / node lost transitions out.

    unknown --heartbeat--> up --silent > lease--> lost --heartbeat--> up

Time is a float (monotonic seconds) passed in by the caller, so tests need no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Joined:
    node: str


@dataclass(frozen=True)
class Lost:
    node: str
    silent_for: float


@dataclass
class Leases:
    lease: float
    last_seen: dict[str, float] = field(default_factory=dict)
    up: set[str] = field(default_factory=set)

    def assume_up(self, nodes: Iterable[str], now: float) -> None:
        """Nodes another replica (or our previous life) saw up: they get a full lease from now."""
        for node in nodes:
            self.up.add(node)
            self.last_seen[node] = now

    def heartbeat(self, node: str, now: float) -> Joined | None:
        self.last_seen[node] = max(now, self.last_seen.get(node, now))
        if node in self.up:
            return None
        self.up.add(node)
        return Joined(node)

    def overdue(self, now: float) -> bool:
        return any(now - self.last_seen[node] > self.lease for node in self.up)

    def expire(self, now: float) -> list[Lost]:
        lost = [
            Lost(node, now - self.last_seen[node])
            for node in sorted(self.up)
            if now - self.last_seen[node] > self.lease
        ]
        for event in lost:
            self.up.discard(event.node)
        return lost

    def forget(self, keep: Iterable[str]) -> None:
        """Drop nodes that left the cluster file."""
        keep = set(keep)
        self.up &= keep
        self.last_seen = {n: t for n, t in self.last_seen.items() if n in keep}
