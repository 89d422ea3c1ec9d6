"""The cluster file (YAML) as typed structs.

Key names are a contract with operators: extend, never rename. Durations are written as strings
(``200ms``, ``1s``, ``5m``) in the file and kept as float seconds here.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Timing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Liveness timing. ``lease`` is how long a silent node keeps its groups; see docs/safety.md."""

    heartbeat: float = 0.2
    lease: float = 0.8


class Fence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A power fence in the interface of the ``fence-agents`` package (as Pacemaker's stonith
    runs them): ``agent`` reads ``action=off`` and ``options`` as ``key=value`` lines on stdin and
    exits 0 once the node is off. ``{node}`` in an option's value is the node's name."""

    agent: str
    options: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float = 30.0


class Cluster(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    timing: Timing = Timing()
    # run (by placement, once per alert) with VIGIL_ALERT_KIND/GROUP/NODE/MESSAGE in its env
    alert: str | None = None
    fence: Fence | None = None  # every node's fence, unless the node gives its own


class Node(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    interface: str = "eth0"
    # powered off before a restart group of this node, lost, runs elsewhere (docs/safety.md)
    fence: Fence | None = None


class App(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Either a foreground ``command`` (Vigil is its parent and sees its exit at once) or, for a
    daemon that forks, ``start`` / ``stop`` / ``check`` commands (Oracle's action script model)."""

    command: str | None = None
    start: str | None = None
    stop: str | None = None
    check: str | None = None
    user: str | None = None
    workdir: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    start_timeout: float = 10.0
    stop_timeout: float = 5.0
    before_start: str | None = None
    after_stop: str | None = None

    @property
    def is_daemon(self) -> bool:
        return self.command is None


class Monitor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exactly one of ``tcp`` (a port on the group's address), ``http`` (a URL, 2xx expected) or
    ``exec`` (a command, exit 0 expected)."""

    tcp: int | None = None
    http: str | None = None
    exec: str | None = None
    interval: float = 1.0
    timeout: float = 1.0
    failures: int = 3

    @property
    def kind(self) -> str:
        return "tcp" if self.tcp is not None else "http" if self.http is not None else "exec"

    @property
    def target(self) -> str:
        return str(self.tcp if self.tcp is not None else self.http or self.exec)


class Restart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Local restarts before the group fails over (Pacemaker's migration-threshold)."""

    max: int = 3
    window: float = 60.0
    backoff: float = 0.2
    failure_timeout: float = 600.0


class Group(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    address: str
    preferred: str
    app: App
    possible: list[str] = msgspec.field(default_factory=list)
    monitors: list[Monitor] = msgspec.field(default_factory=list)
    restart: Restart = Restart()
    # restart: the app is restarted on the new node; address-only: the address moves and is
    # held there with the app down (offline), so clients are refused at once and move on
    on_failover: Literal["restart", "address-only"] = "restart"
    failback: Literal["manual", "auto"] = "manual"
    failback_delay: float = 30.0  # auto: the preferred node must have been up this long

    @property
    def sequence(self) -> list[str]:
        """The sequenced node list: preferred first, then possible nodes in order."""
        return [self.preferred, *self.possible]


class Service(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What clients use (Oracle's services): offered by its ``preferred`` groups in normal mode;
    when one fails or is halted, it resumes on an ``available`` group."""

    name: str
    preferred: list[str]
    available: list[str] = msgspec.field(default_factory=list)
    failback: Literal["manual", "auto"] = "manual"


class ClusterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cluster: Cluster
    nodes: list[Node]
    groups: list[Group] = msgspec.field(default_factory=list)
    services: list[Service] = msgspec.field(default_factory=list)

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    def fence(self, node: str) -> Fence | None:
        """The fence of ``node``: its own, else the cluster's default (None: not fenced)."""
        spec = next((n for n in self.nodes if n.name == node), None)
        if spec is not None and spec.fence is not None:
            return spec.fence
        return self.cluster.fence if spec is not None else None
