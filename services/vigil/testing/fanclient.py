"""``python -m vigil.testing.fanclient URL SERVICE SECONDS``: ``vigil.client.ServiceClient`` as an
application would use it, in its own process (in a lab, in the client namespace). Each event it
handles is printed as one JSON line together with what ``endpoint()`` returns *right after* it
handled that event, and that endpoint is then tried with a real HTTP GET on port 8080."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from nats.aio.msg import Msg

from vigil.client import Endpoint, ServiceClient

PORT = 8080


def out(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def dump(endpoint: Endpoint | None) -> dict[str, str] | None:
    if endpoint is None:
        return None
    return {"group": endpoint.group, "node": endpoint.node, "address": endpoint.address}


async def get(address: str) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, PORT), 0.5)
        writer.write(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 0.5)
        writer.close()
        return data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    except Exception as exc:  # reported, not raised: the record says what the client met
        return f"error: {type(exc).__name__}: {exc}"


class Watched(ServiceClient):
    def __init__(self, urls: list[str], service: str) -> None:
        super().__init__(urls, service)
        self.tries: set[asyncio.Task[None]] = set()

    async def _on_event(self, msg: Msg) -> None:
        received = time.time()
        await super()._on_event(msg)
        chosen = self.endpoint()  # what a caller gets right after this event
        handled = time.time()
        event = json.loads(msg.data)
        out(
            kind="event",
            received=received,
            handled=handled,
            event=event,
            endpoint=dump(chosen),
            endpoints=[dump(e) for e in self.endpoints()],
        )
        if chosen is not None:  # off the event path, as an application would
            task = asyncio.get_running_loop().create_task(self.try_it(event, chosen))
            self.tries.add(task)
            task.add_done_callback(self.tries.discard)

    async def try_it(self, event: dict[str, Any], chosen: Endpoint) -> None:
        body = await get(chosen.address)
        out(
            kind="served",
            after_seq=event.get("seq"),
            after_source=event.get("source"),
            after_type=event.get("type"),
            endpoint=dump(chosen),
            body=body,
            t=time.time(),
        )


async def main(url: str, service: str, duration: float) -> None:
    client = Watched([url], service)
    await client.start()
    out(
        kind="ready",
        endpoint=dump(client.endpoint()),
        endpoints=[dump(e) for e in client.endpoints()],
    )
    try:
        await asyncio.sleep(duration)
    finally:
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
