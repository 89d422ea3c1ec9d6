"""A client-side helper for applications: a live list of a service's endpoints.

    async with ServiceClient(["nats://10.0.0.5:4222"], "sales") as sales:
        endpoint = sales.endpoint()        # a working endpoint, or None
        ... connect to endpoint.address ...

It reads the current endpoints once, then follows the service's up/down events (Oracle FAN):
a ``service_down`` removes an endpoint at once, so the next ``endpoint()`` call already points at
a live instance, without waiting for a TCP timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Interface
from types import TracebackType

import msgspec
from nats.aio.msg import Msg

from vigil.core.bus import Bus
from vigil.core.credentials import Credentials
from vigil.core.endpoints import Endpoint, endpoints
from vigil.core.subjects import Subjects
from vigil.wire.events import AnyEvent, ServiceDown, ServiceUp

__all__ = ["Endpoint", "ServiceClient"]

_DECODE = msgspec.json.Decoder(AnyEvent)


class ServiceClient:
    def __init__(
        self,
        urls: list[str],
        service: str,
        *,
        root: str = "vigil",
        credentials: Credentials | None = None,
    ) -> None:
        """``credentials``: e.g. ``Credentials(Path("reader.nk"), Path("ca.pem"))``; by default
        ``VIGIL_CREDS`` / ``VIGIL_TLS_CA``, or none."""
        self.credentials = credentials
        self.urls = urls
        self.service = service
        self.subjects = Subjects(root)
        self.live: dict[str, Endpoint] = {}  # group -> endpoint
        self.changed = asyncio.Event()
        self.on_change: Callable[[list[Endpoint]], None] | None = None
        self._bus: Bus | None = None

    async def __aenter__(self) -> ServiceClient:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        self._bus = await Bus.connect(
            self.urls, self.subjects, "client", persistent=True, credentials=self.credentials
        )
        for what in ("up", "down"):
            await self._bus.nc.subscribe(
                self.subjects.service_events(self.service, what), cb=self._on_event
            )
        for endpoint in await endpoints(self._bus, self.service):
            self.live.setdefault(endpoint.group, endpoint)

    async def aclose(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    def endpoints(self) -> list[Endpoint]:
        return sorted(self.live.values(), key=lambda e: e.group)

    def endpoint(self) -> Endpoint | None:
        """A live endpoint (the first in a stable order), or None when the service is down."""
        live = self.endpoints()
        return live[0] if live else None

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = _DECODE.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if isinstance(event, ServiceUp):
            try:
                ip = str(IPv4Interface(event.address).ip)
            except ValueError:
                return  # not an address: a malformed event, ignored like one
            self.live[event.group] = Endpoint(self.service, event.group, event.node, ip)
        elif isinstance(event, ServiceDown):
            current = self.live.get(event.group)
            if current is not None and current.node == event.node:
                del self.live[event.group]
        else:
            return
        self.changed.set()
        if self.on_change is not None:
            self.on_change(self.endpoints())
