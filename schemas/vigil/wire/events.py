"""Events on the bus: what happened, in the past tense, one JSON object per message.

Every event carries its ``type`` tag, the ``source`` that saw it (``service@node``), a per-source
``seq`` and a wall-clock ``ts``, so ``nats sub 'vigil.>'`` reads like a log and a consumer can tell
a stale or duplicated message. Tags are stable strings, never class names.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    source: str
    seq: int
    ts: datetime


class Heartbeat(Event, frozen=True, kw_only=True, tag="heartbeat"):
    """A node agent is alive. Sent every ``timing.heartbeat`` (outside ``vigil.>``: it is noise)."""

    node: str


class LeaseGranted(Event, frozen=True, kw_only=True, tag="lease_granted"):
    """Membership's answer to a heartbeat (a request): ``node`` may keep answering for its
    addresses for ``ttl`` seconds from when it sent that heartbeat. ``incarnation`` grows each
    time the node rejoins after it was declared lost; a node that sees it change has been
    declared lost meanwhile, and lets go of everything before it takes the lease."""

    node: str
    incarnation: int
    ttl: float


class NodeJoined(Event, frozen=True, kw_only=True, tag="node_joined"):
    node: str


class NodeLost(Event, frozen=True, kw_only=True, tag="node_lost"):
    node: str
    silent_for: float  # seconds since its last heartbeat, as membership measured it


class ConfigApplied(Event, frozen=True, kw_only=True, tag="config_applied"):
    cluster: str
    revision: int
    groups: int
    nodes: int


class PlacementDecided(Event, frozen=True, kw_only=True, tag="placement_decided"):
    """Placement moved a group: to ``node`` (None = run nowhere) at ``epoch``."""

    group: str
    node: str | None
    previous: str | None
    epoch: int
    reason: str
    moving_to: str | None = None  # a switchover: released here, going there next


class AddressAcquired(Event, frozen=True, kw_only=True, tag="address_acquired"):
    group: str
    node: str
    address: str
    epoch: int


class AddressReleased(Event, frozen=True, kw_only=True, tag="address_released"):
    group: str
    node: str
    address: str
    epoch: int


class AppStarted(Event, frozen=True, kw_only=True, tag="app_started"):
    group: str
    node: str
    epoch: int
    pid: int


class AppStopped(Event, frozen=True, kw_only=True, tag="app_stopped"):
    group: str
    node: str
    epoch: int
    exit_code: int | None


class AppFailed(Event, frozen=True, kw_only=True, tag="app_failed"):
    """The app failed on ``node``. ``final``: the node gives up on it (restart limit reached, or
    it could not start), and placement moves the group to its next node."""

    group: str
    node: str
    epoch: int
    exit_code: int | None
    reason: str
    final: bool = False


class AppStopFailed(Event, frozen=True, kw_only=True, tag="app_stop_failed"):
    """Processes of the app survived SIGKILL (or a daemon's stop): the group is started nowhere
    else until the stop is confirmed (``app_stopped``) or the node is lost."""

    group: str
    node: str
    epoch: int
    reason: str


class MonitorsStarted(Event, frozen=True, kw_only=True, tag="monitors_started"):
    group: str
    node: str
    epoch: int
    monitors: list[str]


class MonitorsStopped(Event, frozen=True, kw_only=True, tag="monitors_stopped"):
    group: str
    node: str
    epoch: int


class SwitchingDisabled(Event, frozen=True, kw_only=True, tag="switching_disabled"):
    """The group landed on the last eligible node of its list; it will not move again until an
    operator runs ``vigil enable``."""

    group: str
    node: str | None
    epoch: int


class NodeFenced(Event, frozen=True, kw_only=True, tag="node_fenced"):
    """Placement's fence agent powered ``node`` off (its lost ``incarnation``): its restart
    groups may run elsewhere now."""

    node: str
    incarnation: int
    agent: str
    attempts: int = 1


class Alert(Event, frozen=True, kw_only=True, tag="alert"):
    kind: str
    group: str
    node: str | None
    message: str


class WatchdogReported(Event, frozen=True, kw_only=True, tag="watchdog"):
    """The watchdog of a group on ``node``: ``started`` (the app failed or was shut down),
    ``cleaned`` (it killed what was left), ``stop_failed`` (something survives SIGKILL),
    ``ready`` (the app can run on this node again)."""

    group: str
    node: str
    kind: str
    detail: str


class IntentChanged(Event, frozen=True, kw_only=True, tag="intent_changed"):
    """An operator asked for something: ``admin`` run / halted / offline, or a switchover."""

    group: str
    admin: str
    switchover_to: str | None = None
    user: str = ""


class ServiceUp(Event, frozen=True, kw_only=True, tag="service_up"):
    """``service`` is offered by ``group`` on ``node`` at ``address`` (Oracle FAN's UP). Every
    group is also a service of its own name; named services come from the cluster file."""

    group: str
    node: str
    address: str
    epoch: int
    service: str = ""  # "" on events from before services existed: the group itself
    status: str = "up"


class ServiceDown(Event, frozen=True, kw_only=True, tag="service_down"):
    """``service`` is no longer offered by ``group`` on ``node``; ``reason`` is ``failure``,
    ``user`` (an operator's halt or move) or ``dependency`` (the service moved elsewhere)."""

    group: str
    node: str
    address: str
    epoch: int
    reason: str
    service: str = ""
    status: str = "down"


AnyEvent = (
    Heartbeat
    | LeaseGranted
    | NodeJoined
    | NodeLost
    | ConfigApplied
    | PlacementDecided
    | AddressAcquired
    | AddressReleased
    | AppStarted
    | AppStopped
    | AppFailed
    | AppStopFailed
    | MonitorsStarted
    | MonitorsStopped
    | IntentChanged
    | WatchdogReported
    | SwitchingDisabled
    | NodeFenced
    | Alert
    | ServiceUp
    | ServiceDown
)

ALL_EVENTS: tuple[type[Event], ...] = (
    Heartbeat,
    LeaseGranted,
    NodeJoined,
    NodeLost,
    ConfigApplied,
    PlacementDecided,
    AddressAcquired,
    AddressReleased,
    AppStarted,
    AppStopped,
    AppFailed,
    AppStopFailed,
    MonitorsStarted,
    MonitorsStopped,
    IntentChanged,
    WatchdogReported,
    SwitchingDisabled,
    NodeFenced,
    Alert,
    ServiceUp,
    ServiceDown,
)
