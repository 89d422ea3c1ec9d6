"""A node service whose node is not in the applied cluster file (a typo, a default name, a
host a DaemonSet picked up) must not guess: it touches no interface and runs no app. It waits,
says why in its log once a minute, and leaves a ``stray.<node>`` record in the observed bucket
every few seconds, which ``vigil status`` lists as "heartbeating but not in the cluster file".
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from nats.js.kv import KeyValue

from vigil.wire.cluster import ClusterSpec
from vigil.wire.records import StrayNode

from .bus import Bus, encode, kv
from .clusterconfig import ConfigSource

log = logging.getLogger(__name__)

REPORT_EVERY = 5.0  # seconds between stray records
LOG_EVERY = 60.0  # seconds between error lines
FRESH = 60.0  # a stray record older than this is not shown (the service went away)


def stray_key(node: str) -> str:
    return f"stray.{node}"


def listed(spec: ClusterSpec, node: str) -> bool:
    return any(n.name == node for n in spec.nodes)


def fresh(record: StrayNode, now: datetime) -> bool:
    return (now - record.seen).total_seconds() <= FRESH


async def wait_until_listed(bus: Bus, config: ConfigSource, node: str, service: str) -> None:
    """Return once a cluster file is applied that lists ``node``."""
    observed: KeyValue | None = None
    last_log = last_report = -float("inf")
    while True:
        await config.refresh()
        spec = config.spec
        if spec is not None and listed(spec, node):
            if observed is not None:
                try:
                    await observed.delete(stray_key(node))
                except Exception as exc:  # the record ages out of `vigil status` anyway
                    log.debug("could not delete %s: %s", stray_key(node), exc)
            return
        now = time.monotonic()
        if spec is not None and now - last_log >= LOG_EVERY:
            last_log = now
            log.error(
                "node %r is not in the applied cluster file (nodes: %s): this %s service touches "
                "nothing until it is; set VIGIL_NODE (--node) to one of them or add %r to the file",
                node,
                ", ".join(n.name for n in spec.nodes),
                service,
                node,
            )
        if spec is not None and now - last_report >= REPORT_EVERY:
            last_report = now
            try:
                observed = observed or await kv(bus, bus.subjects.bucket_observed)
                record = StrayNode(node=node, service=service, seen=datetime.now(UTC))
                await observed.put(stray_key(node), encode(record))
            except Exception as exc:
                log.warning("could not record stray node %r: %s", node, exc)
        await asyncio.sleep(0.5)
