"""Records stored in JetStream key-value buckets (the durable, level-triggered state)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

NodeState = Literal["up", "lost"]
Mode = Literal["normal", "failover", "offline", "halted"]


class NodeRecord(msgspec.Struct, frozen=True):
    """Bucket ``nodes``, key = node name. Written by membership with a compare-and-set on every
    lease grant and every transition: grants and loss declarations are ordered through it."""

    name: str
    state: NodeState
    since: datetime
    # wall-clock end of the last lease granted (None: written before leases were recorded)
    granted_until: datetime | None = None
    incarnation: int = 0  # grows by one each time the node (re)joins


class LeaseRecord(msgspec.Struct, frozen=True):
    """Bucket ``leases``, key = node name: the second place a node's lease may be granted, so
    that one stream's leader election (after a NATS server died) does not let every fence
    lapse. Written by membership with a compare-and-set. A lease is granted here only for the
    incarnation ``nodes`` established; ``revoked`` is final for that incarnation, and is written
    before the node is declared lost in ``nodes`` (docs/safety.md, "Two lease buckets")."""

    name: str
    incarnation: int
    granted_until: datetime
    revoked: bool = False


class Placement(msgspec.Struct, frozen=True):
    """Bucket ``placement``, key = group name. Written by placement with a compare-and-set.

    ``node`` is None when the group runs nowhere (halted). ``epoch`` grows by one per decision,
    so a node can drop any decision older than one it has already seen.
    """

    group: str
    node: str | None
    epoch: int
    reason: str = ""
    # node -> unix time until which the group may not run there (it failed there for good)
    banned: dict[str, float] = msgspec.field(default_factory=dict)
    # a node where the app's stop failed: the group starts nowhere until that is resolved
    blocked_by: str | None = None
    # a planned move in progress: released here, to be placed on this node next
    moving_to: str | None = None
    # the last operator switchover request (Intent.switchover_id) this placement has applied
    switchover_id: int = 0
    # False once the group landed on the last eligible node of its list: it moves no more
    # (no ping-pong) until an operator runs `vigil enable`
    switching: bool = True
    enable_id: int = 0  # the last Intent.enable_id applied
    # the node's incarnation (NodeRecord) this placement was decided for: a node that was
    # declared lost and rejoined acquires nothing until placement gives it the group anew
    incarnation: int = 0


class FenceRecord(msgspec.Struct, frozen=True):
    """Bucket ``fencing``, key ``<node>.<incarnation>``: the power fence of a lost node's
    incarnation. Written by placement with compare-and-set, so one replica at a time runs the
    agent (until ``claimed_until``) and a success is recorded once, for every replica to see."""

    node: str
    incarnation: int
    fenced: bool = False
    attempts: int = 0  # runs of the agent that failed
    claimed_by: str = ""  # the replica running the agent, or holding off after a failure
    claimed_until: float = 0.0  # unix time; past it another replica may run the agent
    error: str = ""  # the last failure, without the options (they hold a password)


class ServiceRecord(msgspec.Struct, frozen=True):
    """Bucket ``services``, key = service name. Written by placement: the groups offering it."""

    name: str
    members: list[str]
    epoch: int


Admin = Literal["run", "halted", "offline"]


class Intent(msgspec.Struct, frozen=True):
    """Bucket ``intents``, key = group name. Written by the operator's CLI, read by placement
    and supervisors: what the operator wants, kept until changed."""

    group: str
    admin: Admin = "run"  # halted: nowhere; offline: address up, app down
    switchover_to: str | None = None
    switchover_id: int = 0  # grows by one per `vigil switchover`
    enable_id: int = 0  # grows by one per `vigil enable`


class AddressStatus(msgspec.Struct, frozen=True):
    """Bucket ``observed``, key ``address.<node>.<group>``; written by the address service."""

    group: str
    node: str
    address: str
    held: bool
    epoch: int


class AppStatus(msgspec.Struct, frozen=True):
    """Bucket ``observed``, key ``app.<node>.<group>``. Written by the node's supervisor."""

    group: str
    node: str
    running: bool
    epoch: int
    pid: int | None = None
    stop_failed: bool = False


class StrayNode(msgspec.Struct, frozen=True):
    """Bucket ``observed``, key ``stray.<node>``. Written every few seconds by a node service
    whose node is not in the applied cluster file (a typo, a default name, a host the
    DaemonSet picked up): it touches nothing and waits, and ``vigil status`` lists it."""

    node: str
    service: str
    seen: datetime
