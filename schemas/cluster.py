"""The cluster file (YAML) as typed structs.

Key names are a contract with operators: extend, never rename. Durations are written as strings
(``200ms``, ``1s``, ``5m``) in the file and kept as float seconds here.
"""

from __future__ import annotations

import msgspec


class Timing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Liveness timing. ``lease`` is how long a silent node keeps its groups; see docs/safety.md."""

    heartbeat: float = 0.2
    lease: float = 0.8


class Cluster(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    timing: Timing = Timing()


class Node(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    interface: str = "eth0"


class App(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command: str
    stop_timeout: float = 5.0


class Group(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    address: str
    preferred: str
    app: App
    possible: list[str] = msgspec.field(default_factory=list)

    @property
    def sequence(self) -> list[str]:
        """The sequenced node list: preferred first, then possible nodes in order."""
        return [self.preferred, *self.possible]


class ClusterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cluster: Cluster
    nodes: list[Node]
    groups: list[Group] = msgspec.field(default_factory=list)

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)
