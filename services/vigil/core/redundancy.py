"""Is the bus redundant right now? Every stream Vigil uses led, with every replica current.

A stream replicated on three servers survives one server's death, but only once its leader has
been elected and the returning server has caught up: until then one more death (of the other
lease bucket's leader, say) is a double fault. ``vigil status`` reports what is degraded, and
the chaos run starts a schedule only on a redundant bus, so that a schedule is the faults it
names and not also the tail of the one before.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors

from .bus import Bus
from .subjects import Subjects


def streams(s: Subjects) -> list[str]:
    """Every stream of a cluster (the fencing bucket's exists only once a fence is set)."""
    return [f"KV_{b}" for b in s.all_buckets] + [s.stream]


async def degraded(bus: Bus) -> list[str]:
    """One line per stream that is not fully redundant now, in stream order (empty: all are).
    A stream that does not exist is not listed, except while the servers elect their meta
    leader: then no stream's info is answered, and every one is listed as unanswered."""

    async def one(name: str) -> str:
        try:
            # a stream with no leader does not answer: js_quick gives up after QUICK_TIMEOUT
            info = await bus.js_quick.stream_info(name)
        except nats.js.errors.NotFoundError:
            return ""
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            return f"{name}: no answer ({type(exc).__name__}): electing a leader?"
        cluster = info.cluster
        if cluster is None:  # a single server: nothing to be redundant with
            return ""
        if not cluster.leader:
            return f"{name}: no leader"
        replicas = cluster.replicas or []
        behind = sorted(p.name or "?" for p in replicas if p.offline or not p.current)
        return f"{name}: led by {cluster.leader}; behind: {', '.join(behind)}" if behind else ""

    found = await asyncio.gather(*(one(n) for n in streams(bus.subjects)))
    return [line for line in found if line]
