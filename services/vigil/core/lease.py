"""The lease arithmetic every service agrees on (docs/safety.md)."""

from __future__ import annotations


def fence_ttl(heartbeat: float, lease: float) -> float:
    """How long one grant keeps a node's addresses answering: it must lapse before membership
    may declare the node lost (``lease`` after the grant), with a heartbeat of slack for the
    round trip and another for clock drift and scheduling."""
    return lease - 2 * heartbeat


def lapse_grace(lease: float) -> float:
    """How long a node keeps the addresses of a lapsed lease configured (answering for none:
    the kernel's fence lapsed) in case its next grant is for the same incarnation. Such a
    grant proves no replica declared it lost (a declaration starts a new incarnation), so
    nothing of its was moved without its own release: the fence is simply renewed. One
    heartbeat lost to a NATS server's death lapsed the fence and cost every address here a
    release and a fresh placement read, which waited for that bucket's election (chaos seed 3:
    6 s)."""
    return 2 * lease
