"""Simulated node agents for the control-plane scale bench: many nodes in one process.

    python -m bench.simagent --nats URL --nodes n1,n2,... --heartbeat 0.2 --ctl vbench.ctl.0

Each simulated node does on the bus what a real node's address service and supervisor do,
without namespaces, addresses or apps:

- heartbeats ``<root>_hb.<node>`` every ``--heartbeat`` (a ``Heartbeat`` event, random phase);
- for a ``PlacementDecided`` that puts a group on it: publishes ``AddressAcquired`` and writes
  ``AddressStatus(held=True)`` to the observed bucket (the address service's ``announce``), then
  publishes ``AppStarted`` and ``ServiceUp`` and writes ``AppStatus(running=True)`` (the
  supervisor's ``start``), one group at a time per node, like the real services;
- when it comes back after being stopped: releases what it held that was placed elsewhere
  meanwhile (``AddressReleased`` + ``AddressStatus(held=False)``, ``AppStatus(running=False)``).

One subscription to ``<root>.placement.*`` per process serves all its nodes (a real node has two,
one per service: the server-side fan-out of a real cluster is not reproduced here).

Control, request/reply on ``--ctl`` (JSON): ``{"op": "stop"|"start", "node": n}``,
``{"op": "poll", "on": bool}`` (each node also re-reads the cluster file every second, twice,
as the real address service and supervisor do), ``{"op": "ping"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

import msgspec
import nats
from nats.aio.msg import Msg

from vigil.core.bus import Bus, encode, kv, now
from vigil.core.clusterconfig import ConfigSource
from vigil.core.subjects import CONFIG_KEY, Subjects, address_key, app_key
from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    AnyEvent,
    AppStarted,
    Heartbeat,
    PlacementDecided,
    ServiceUp,
)
from vigil.wire.records import AddressStatus, AppStatus

_DECODE = msgspec.json.Decoder(AnyEvent)


@dataclass
class Agent:
    name: str
    alive: bool = True
    seq: int = 0
    held: dict[str, int] = field(default_factory=dict)  # group -> epoch
    queue: asyncio.Queue[PlacementDecided] = field(default_factory=asyncio.Queue)
    last_beat: float = 0.0

    def stamp(self, service: str) -> dict[str, object]:
        self.seq += 1
        return {"source": f"{service}@{self.name}", "seq": self.seq, "ts": now()}


class Sim:
    def __init__(self, bus: Bus, nodes: list[str], heartbeat: float) -> None:
        self.bus = bus
        self.s = bus.subjects
        self.agents = {n: Agent(n) for n in nodes}
        self.heartbeat = heartbeat
        self.addresses: dict[str, str] = {}
        self.latest: dict[str, tuple[str | None, int]] = {}  # group -> (node, epoch)
        self.polling = False
        self.polls = 0

    async def run(self, ctl: str) -> None:
        self.observed = await kv(self.bus, self.s.bucket_observed)
        config = ConfigSource(self.bus)
        while not await config.refresh():  # noqa: ASYNC110 - polling the bus, not a local flag
            await asyncio.sleep(0.2)
        assert config.spec is not None
        self.addresses = {g.name: g.address for g in config.spec.groups}
        self.config_bucket = await config.bucket()
        nc = self.bus.nc
        await nc.subscribe(self.s.all_placements, cb=self.on_placement)
        await nc.subscribe(ctl, cb=self.on_ctl)
        async with asyncio.TaskGroup() as tg:
            for agent in self.agents.values():
                tg.create_task(self.beat(agent), name=f"heartbeat-{agent.name}")
                tg.create_task(self.work(agent), name=f"acks-{agent.name}")
                for service in ("address", "supervisor"):
                    tg.create_task(self.poll(), name=f"poll-{service}-{agent.name}")

    async def beat(self, agent: Agent) -> None:
        await asyncio.sleep(random.uniform(0, self.heartbeat))
        while True:
            started = time.monotonic()
            if agent.alive:
                data = encode(Heartbeat(**agent.stamp("address"), node=agent.name))  # type: ignore[arg-type]
                await self.bus.nc.publish(self.s.heartbeat(agent.name), data)
                agent.last_beat = time.time()
            await asyncio.sleep(max(0.0, started + self.heartbeat - time.monotonic()))

    async def poll(self) -> None:
        await asyncio.sleep(random.uniform(0, 1.0))
        while True:
            if self.polling:
                with contextlib.suppress(Exception):
                    await self.config_bucket.get(CONFIG_KEY)
                    self.polls += 1
            await asyncio.sleep(1.0)

    async def on_placement(self, msg: Msg) -> None:
        try:
            event = _DECODE.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if not isinstance(event, PlacementDecided):
            return
        old = self.latest.get(event.group)
        if old is not None and old[1] >= event.epoch:
            return
        self.latest[event.group] = (event.node, event.epoch)
        agent = self.agents.get(event.node or "")
        if agent is not None and agent.alive:
            agent.queue.put_nowait(event)

    async def work(self, agent: Agent) -> None:
        while True:
            event = await agent.queue.get()
            if not agent.alive or event.epoch <= agent.held.get(event.group, 0):
                continue
            await self.acquire(agent, event.group, event.epoch)

    async def acquire(self, agent: Agent, group: str, epoch: int) -> None:
        s, n, address = self.s, agent.name, self.addresses.get(group, "")
        agent.held[group] = epoch
        await self.bus.nc.publish(
            s.address(n, group, "acquired"),
            encode(AddressAcquired(**agent.stamp("address"), group=group, node=n,  # type: ignore[arg-type]
                                   address=address, epoch=epoch)),
        )  # fmt: skip
        await self.observed.put(
            address_key(n, group), encode(AddressStatus(group, n, address, True, epoch))
        )
        await self.bus.nc.publish(
            s.app(n, group, "started"),
            encode(AppStarted(**agent.stamp("supervisor"), group=group, node=n, epoch=epoch,  # type: ignore[arg-type]
                              pid=0)),
        )  # fmt: skip
        await self.bus.nc.publish(
            s.service(group, "up", n),
            encode(ServiceUp(**agent.stamp("supervisor"), group=group, node=n,  # type: ignore[arg-type]
                             address=address, epoch=epoch)),
        )  # fmt: skip
        await self.observed.put(
            app_key(n, group), encode(AppStatus(group=group, node=n, running=True, epoch=epoch))
        )

    async def release_stale(self, agent: Agent) -> int:
        """Back from the dead: let go of what was placed elsewhere meanwhile."""
        s, n, released = self.s, agent.name, 0
        for group, epoch in list(agent.held.items()):
            node, latest = self.latest.get(group, (None, 0))
            if node == n and latest == epoch:
                continue
            del agent.held[group]
            address = self.addresses.get(group, "")
            await self.observed.put(
                app_key(n, group),
                encode(AppStatus(group=group, node=n, running=False, epoch=epoch)),
            )
            await self.bus.nc.publish(
                s.address(n, group, "released"),
                encode(AddressReleased(**agent.stamp("address"), group=group, node=n,  # type: ignore[arg-type]
                                       address=address, epoch=epoch)),
            )  # fmt: skip
            await self.observed.put(
                address_key(n, group), encode(AddressStatus(group, n, address, False, epoch))
            )
            released += 1
        return released

    async def on_ctl(self, msg: Msg) -> None:
        req = json.loads(msg.data)
        op = req.get("op")
        reply: dict[str, object] = {"ok": True}
        if op == "stop":
            agent = self.agents[req["node"]]
            agent.alive = False
            reply.update(t=time.time(), last_beat=agent.last_beat)
        elif op == "start":
            agent = self.agents[req["node"]]
            reply.update(released=await self.release_stale(agent))
            agent.alive = True
            reply.update(t=time.time())
        elif op == "poll":
            self.polling = bool(req.get("on"))
            reply.update(polls=self.polls)
        elif op == "ping":
            reply.update(nodes=len(self.agents), polls=self.polls)
        await msg.respond(json.dumps(reply).encode())


async def amain(args: argparse.Namespace) -> None:
    nc = await nats.connect(
        servers=[args.nats], name=args.name, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    bus = Bus(nc, Subjects(args.root), "sim")
    try:
        await Sim(bus, args.nodes.split(","), args.heartbeat).run(args.ctl)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nats", required=True)
    p.add_argument("--nodes", required=True, help="comma-separated node names")
    p.add_argument("--heartbeat", type=float, default=0.2)
    p.add_argument("--ctl", required=True, help="control subject (request/reply)")
    p.add_argument("--name", default="bench-simagent")
    p.add_argument("--root", default="vigil")
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
