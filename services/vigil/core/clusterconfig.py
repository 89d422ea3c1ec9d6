"""The applied cluster file, as every service sees it: read from the bus, reloaded on change."""

from __future__ import annotations

import logging

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import ConfigApplied

from . import config
from .bus import Bus, ensure_stream, kv, until_elected
from .subjects import CONFIG_KEY

log = logging.getLogger(__name__)


class ConfigSource:
    """Holds the latest valid spec; an invalid stored spec is logged and the old one kept."""

    def __init__(self, bus: Bus, bucket: KeyValue | None = None) -> None:
        self.bus = bus
        self.spec: ClusterSpec | None = None
        self.revision = 0
        self._bucket = bucket  # a reader may bring its own handle (``replica_reader``)

    async def bucket(self) -> KeyValue:
        if self._bucket is None:
            self._bucket = await kv(self.bus, self.bus.subjects.bucket_config, history=10)
        return self._bucket

    async def refresh(self, strict: bool = False) -> bool:
        """Re-read the stored spec; True when it changed. A failed read raises when ``strict``
        (a reader such as ``vigil status`` must not mistake "could not read" for "nothing
        applied"); a service logs it and keeps the spec it has."""
        bucket = await self.bucket()
        try:
            entry = await bucket.get(CONFIG_KEY)
        except KeyNotFoundError:  # nothing applied yet
            return False
        except Exception as exc:
            if strict:
                raise
            log.warning("could not read the cluster file (%s); keeping what we have", exc)
            return False
        if entry.revision == self.revision or not entry.value:
            return False
        try:
            spec = config.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError, config.ConfigError) as exc:
            log.error(
                "stored cluster file revision %s is invalid, keeping the old one: %s",
                entry.revision,
                exc,
            )
            self.revision = entry.revision or 0
            return False
        self.spec, self.revision = spec, entry.revision or 0
        return True


async def store(bus: Bus, spec: ClusterSpec) -> int:
    """Store a validated spec and announce it; returns the new revision."""
    await ensure_stream(bus)  # so that the history starts with this very event
    source = ConfigSource(bus)
    bucket = await source.bucket()
    data = config.encode(spec)
    revision = await until_elected(lambda: bucket.put(CONFIG_KEY, data), "the config bucket", bus)
    await bus.publish(
        bus.subjects.config_applied,
        ConfigApplied(
            **bus.stamp(),
            cluster=spec.cluster.name,
            revision=revision,
            groups=len(spec.groups),
            nodes=len(spec.nodes),
        ),
    )
    return revision
