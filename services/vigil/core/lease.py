"""The lease arithmetic every service agrees on (docs/safety.md)."""

from __future__ import annotations


def fence_ttl(heartbeat: float, lease: float) -> float:
    """How long one grant keeps a node's addresses answering: it must lapse before membership
    may declare the node lost (``lease`` after the grant), with a heartbeat of slack for the
    round trip and another for clock drift and scheduling."""
    return lease - 2 * heartbeat
