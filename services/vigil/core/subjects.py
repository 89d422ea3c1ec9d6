"""Every subject and bucket name Vigil uses, built in one place from a configurable root.

Tests give each run its own root (``VIGIL_ROOT``) so they can share one nats-server. Heartbeats
live under ``<root>_hb`` rather than ``<root>.``: they are frequent and carry no news, so
``nats sub 'vigil.>'`` shows only events worth reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Subjects:
    root: str = "vigil"

    @classmethod
    def from_env(cls) -> Subjects:
        return cls(os.environ.get("VIGIL_ROOT", "vigil"))

    # -- events (all under <root>.>, kept in the event stream) --------------------------------
    @property
    def all_events(self) -> str:
        return f"{self.root}.>"

    def heartbeat(self, node: str) -> str:
        return f"{self.root}_hb.{node}"

    @property
    def all_heartbeats(self) -> str:
        return f"{self.root}_hb.*"

    def node_joined(self, node: str) -> str:
        return f"{self.root}.node.{node}.joined"

    def node_lost(self, node: str) -> str:
        return f"{self.root}.node.{node}.lost"

    @property
    def all_node_events(self) -> str:
        return f"{self.root}.node.*.*"

    @property
    def config_applied(self) -> str:
        return f"{self.root}.config.applied"

    def placement(self, group: str) -> str:
        return f"{self.root}.placement.{group}"

    @property
    def all_placements(self) -> str:
        return f"{self.root}.placement.*"

    def address(self, node: str, group: str, what: str) -> str:
        return f"{self.root}.address.{node}.{group}.{what}"

    def all_address_events(self, node: str = "*") -> str:
        return f"{self.root}.address.{node}.*.*"

    def app(self, node: str, group: str, what: str) -> str:
        return f"{self.root}.app.{node}.{group}.{what}"

    def all_app_events(self, node: str = "*", what: str = "*") -> str:
        return f"{self.root}.app.{node}.*.{what}"

    def group_event(self, group: str, what: str) -> str:
        return f"{self.root}.group.{group}.{what}"

    def node_fenced(self, node: str) -> str:
        """Apart from ``node.*.*``: a node's own events come from membership, this from
        placement (and node services need not hear it)."""
        return f"{self.root}.fence.{node}.fenced"

    def alert(self, group: str) -> str:
        return f"{self.root}.alert.{group}"

    def service(self, service: str, what: str, node: str) -> str:
        """A service went up or down on ``node``. The node is the last token so that the server
        can let each node speak only for itself (docs/security.md); ``service_events`` is what
        a client subscribes to."""
        return f"{self.root}.service.{service}.{what}.{node}"

    def service_events(self, service: str, what: str = "*") -> str:
        return f"{self.root}.service.{service}.{what}.*"

    # -- requests (outside <root>.>: not events, not kept) ---------------------------------------
    def logs_request(self, node: str) -> str:
        return f"{self.root}_rpc.logs.{node}"

    # -- durable state ------------------------------------------------------------------------
    @property
    def stream(self) -> str:
        return f"{self.root.upper()}_EVENTS"

    @property
    def bucket_config(self) -> str:
        return f"{self.root}_config"

    @property
    def bucket_nodes(self) -> str:
        return f"{self.root}_nodes"

    @property
    def bucket_leases(self) -> str:
        return f"{self.root}_leases"

    @property
    def bucket_placement(self) -> str:
        return f"{self.root}_placement"

    @property
    def bucket_observed(self) -> str:
        return f"{self.root}_observed"

    @property
    def bucket_services(self) -> str:
        return f"{self.root}_services"

    @property
    def bucket_fencing(self) -> str:
        return f"{self.root}_fencing"

    @property
    def bucket_intents(self) -> str:
        return f"{self.root}_intents"

    @property
    def buckets(self) -> list[str]:
        """The buckets every cluster has (created by whichever service starts first)."""
        return [
            self.bucket_config,
            self.bucket_nodes,
            self.bucket_leases,
            self.bucket_placement,
            self.bucket_observed,
            self.bucket_services,
            self.bucket_intents,
        ]

    @property
    def all_buckets(self) -> list[str]:
        """Those and the ones created only when used: fencing, once a fence is configured."""
        return [*self.buckets, self.bucket_fencing]

    def intent(self, group: str) -> str:
        return f"{self.root}.intent.{group}"

    @property
    def all_intents(self) -> str:
        """Every intent event (what the operator role may publish)."""
        return f"{self.root}.intent.*"


CONFIG_KEY = "cluster"


def address_key(node: str, group: str) -> str:
    return f"address.{node}.{group}"


def fence_key(node: str, incarnation: int) -> str:
    return f"{node}.{incarnation}"


def app_key(node: str, group: str) -> str:
    return f"app.{node}.{group}"
