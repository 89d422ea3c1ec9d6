"""The lab's doors: a TCP forwarder from 127.0.0.1 on the host to each NATS server in the bus.

It binds its listening socket in the host namespace, then moves itself into the bus namespace,
so every connection it makes to NATS starts from inside the lab: no route, no host address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket

from .netns import enter


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listener: socket.socket, host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipe(reader, up_writer))
            tg.create_task(pipe(up_reader, writer))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


async def serve_all(doors: list[tuple[socket.socket, str, int]]) -> None:
    async with asyncio.TaskGroup() as tg:
        for listener, host, port in doors:
            tg.create_task(serve(listener, host, port), name=f"door to {host}:{port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ns", required=True)
    parser.add_argument("doors", nargs="+", metavar="PORT=HOST:PORT", help="host port=lab target")
    args = parser.parse_args(argv)
    doors = []
    for door in args.doors:
        listen, _, to = door.partition("=")
        host, _, port = to.rpartition(":")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(listen)))
        listener.listen(128)
        listener.setblocking(False)
        doors.append((listener, host, int(port)))
    enter(args.ns)  # every listener is bound on the host already
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_all(doors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
