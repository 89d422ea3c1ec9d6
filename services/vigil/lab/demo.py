"""``make run``: build a lab, kill the node a client is talking to, print what happened.

The timeline is told by the events' own timestamps (every service stamps its events) and the
client's own clock: all processes share this machine's clock, so the offsets are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg

from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import (
    AddressAcquired,
    AnyEvent,
    AppStarted,
    Event,
    MonitorsStarted,
    NodeJoined,
    NodeLost,
    PlacementDecided,
    ServiceDown,
    ServiceUp,
)

from ..core import status as status_mod
from .lab import CLIENT_IP, Lab, LabState, vip, wait_for
from .netns import LabError

_DECODE = msgspec.json.Decoder(AnyEvent)


@dataclass
class Answer:
    t: float
    ok: bool
    text: str


def describe(event: Event) -> str:
    match event:
        case NodeLost(node=n, silent_for=s):
            return f"node {n} lost (silent for {s * 1000:.0f} ms)"
        case NodeJoined(node=n):
            return f"node {n} joined"
        case PlacementDecided(group=g, node=n, epoch=e, reason=r):
            return f"{g} -> {n or 'nowhere'} (epoch {e}): {r}"
        case AddressAcquired(group=g, address=a):
            return f"{g}: {a} added, gratuitous ARP sent"
        case AppStarted(group=g, pid=p):
            return f"{g}: app started (pid {p})"
        case MonitorsStarted(group=g, monitors=m):
            return f"{g}: monitors on ({', '.join(m) or 'none configured'})"
        case ServiceUp(group=g, node=n):
            return f"{g}: service up on {n}"
        case ServiceDown(group=g, node=n, reason=r):
            return f"{g}: service down on {n} ({r})"
    return type(event).__name__


class Probe:
    """The real client, in the client namespace, one JSON line per attempt."""

    def __init__(self, state: LabState, target: str) -> None:
        self.answers: list[Answer] = []
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                state.ns("client"),
                sys.executable,
                "-m",
                "vigil.lab.probe",
                "--target",
                target,
                "--interval",
                "0.01",
                "--timeout",
                "0.05",
                "--duration",
                "120",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    async def read(self) -> None:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, self.proc.stdout.readline):
            raw = json.loads(line)
            self.answers.append(
                Answer(raw["t"], raw["ok"], raw.get("body") or raw.get("error", ""))
            )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)

    async def until(self, ok: object, timeout: float, what: str) -> Answer:
        assert callable(ok)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for answer in self.answers[seen:]:
                if ok(answer):
                    return answer
            seen = len(self.answers)
            await asyncio.sleep(0.01)
        raise LabError(f"the client never saw {what} within {timeout:g}s")


async def demo(lab: Lab, spec: ClusterSpec, nats_servers: int = 3, secure: bool = True) -> None:
    group = spec.groups[0]
    victim = group.preferred
    print(
        f"==> lab up: {len(spec.nodes)} nodes, {len(spec.groups)} groups, "
        f"{nats_servers} NATS server(s), 2 membership + 2 placement replicas "
        f"(watch along: vigil lab info; nats sub 'vigil.>')"
    )
    state = await asyncio.to_thread(lab.up, spec, 60.0, nats_servers, secure=secure)
    print(f"    every group runs on its preferred node; client at {CLIENT_IP}")
    bus = await lab.connect(state, "demo")
    events: list[Event] = []

    async def on_event(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):  # not ours to judge: the services count
            events.append(_DECODE.decode(msg.data))

    await bus.nc.subscribe(bus.subjects.all_events, cb=on_event)
    target = f"{vip(spec, group.name)}:8080"
    probe = Probe(state, target)
    reader = asyncio.create_task(probe.read(), name="probe-reader")
    try:
        first = await probe.until(
            lambda a: a.ok and f"served by {victim}" in a.text, 20, f"an answer from {victim}"
        )
        print(f"==> client probing {target} every 10 ms: {first.text}")
        await asyncio.sleep(0.5)  # a steady baseline of answers before the fault
        print(f"==> killing {victim}: SIGKILL every process in its namespace, link down")
        t_kill = time.time()
        killed = await asyncio.to_thread(lab.kill, victim)
        after = await probe.until(
            lambda a: (
                a.ok
                and a.t > t_kill
                and a.text.startswith("served by ")
                and f"served by {victim} " not in a.text
            ),
            30,
            "an answer from a surviving node",
        )
        await asyncio.sleep(0.3)
        last_old = max((a.t for a in probe.answers if a.ok and a.t <= t_kill), default=t_kill)
        print()
        print(f"timeline of the failover of {group.name} (ms after the fault)")
        print(f"  {0:>+8.1f}  {'lab':<22} {victim} killed ({len(killed)} processes), link down")
        for event in sorted(events, key=lambda e: e.ts.timestamp()):
            offset = (event.ts.timestamp() - t_kill) * 1000
            if offset < -50 or offset > (after.t - t_kill) * 1000 + 200:
                continue
            print(f"  {offset:>+8.1f}  {event.source:<22} {describe(event)}")
        print(f"  {(after.t - t_kill) * 1000:>+8.1f}  {'client':<22} {after.text}")
        failed = [a for a in probe.answers if last_old < a.t < after.t and not a.ok]
        kinds = sorted({a.text for a in failed})
        print()
        print(
            f"client outage: {(after.t - last_old) * 1000:.0f} ms without an answer "
            f"({len(failed)} failed attempts: {', '.join(kinds) or 'none'}); "
            f"served again {(after.t - t_kill) * 1000:.0f} ms after the fault"
        )
        print(f"==> reviving {victim}")
        await asyncio.to_thread(lab.revive, victim)
        view = await wait_for(
            bus, lambda v: all(n.state == "up" for n in v.nodes), 30, "every node up again"
        )
        print("    failback is manual: the group stays where it is until an operator moves it")
        print()
        print(status_mod.render_table(view))
    finally:
        probe.stop()
        reader.cancel()
        await bus.close()


def run_demo(lab: Lab, spec: ClusterSpec, nats_servers: int = 3, secure: bool = True) -> int:
    try:
        asyncio.run(demo(lab, spec, nats_servers, secure))
    finally:
        lab.down()
        print(f"==> lab {lab.prefix} removed")
    return 0
