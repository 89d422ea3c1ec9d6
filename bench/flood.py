"""Floods don't lapse leases: the longest gap between lease grants while a peer floods.

Two cases, each against one local nats-server and the real membership service (a process of
its own, default timing: heartbeat 200 ms, lease 800 ms):

- node: a flooder process sends ``--rate`` msgs/s of ``--size`` B garbage for ``--seconds`` on
  the placement decisions subject, which the node's bus consumes (decoding and dropping it on
  its event loop). Measured: the longest gap between the node's lease grants. ``--node-mode``
  ``heart`` is the address service's heart (its own thread, loop and connection); ``loop`` is
  the design before it, the heartbeat's round trip on the flooded loop.
- membership: n1 floods its own heartbeat subject; measured: the longest gap between n2's
  grants (n2's heart in this process, not flooded). ``--membership-path`` runs membership from
  another checkout's ``services`` (e.g. the code before the per-node subscriptions).

    python -m bench.flood                          # both cases, the defaults below
    python -m bench.flood --cases node --node-mode loop
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path

from vigil.address.heart import Beat, Heart
from vigil.core.bus import Bus, encode
from vigil.core.clusterconfig import store
from vigil.core.config import load_data
from vigil.core.subjects import Subjects
from vigil.testing.server import NatsServer
from vigil.wire.events import Heartbeat, PlacementDecided

ROOT = "vflood"
HEARTBEAT, LEASE = 0.2, 0.8  # the defaults


class NoFence:
    async def install(self, vips: Iterable[IPv4Address]) -> None:
        pass

    async def renew(
        self, leased: Iterable[IPv4Address], ttl_ms: int, vips: Iterable[IPv4Address]
    ) -> None:
        pass


async def flooder(
    url: str, subject: str, rate: int, size: int, seconds: float
) -> asyncio.subprocess.Process:
    args = [url, subject, str(rate), str(size), str(seconds)]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.flood", "--flooder", *args
    )


async def flood(url: str, subject: str, rate: int, size: int, seconds: float) -> None:
    """``rate`` msgs/s in batches every 10 ms (a Python publisher, so at most what it can)."""
    import nats

    nc = await nats.connect(url, name="flooder")
    garbage = b"\x00garbage" + b"x" * max(0, size - 8)
    batch = max(1, rate // 100)
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * rate) + batch
        while sent < due:
            await nc.publish(subject, garbage)
            sent += 1
        await asyncio.sleep(0.01)
    await nc.flush()
    await nc.close()
    print(f"flooder: {sent} messages on {subject}", file=sys.stderr)


def gaps(times: list[float], start: float, end: float) -> float:
    """The longest time without a grant over [start, end]."""
    inside = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


async def beat_on_the_loop(bus: Bus, node: str, grants: list[float]) -> None:
    """The design before the heart: the heartbeat's round trip on the service's own loop."""
    while True:
        started = time.monotonic()
        try:
            await bus.nc.request(
                bus.subjects.heartbeat(node),
                encode(Heartbeat(**bus.stamp(), node=node)),
                timeout=HEARTBEAT,
            )
            grants.append(time.monotonic())
        except Exception:
            pass
        await asyncio.sleep(max(0.0, started + HEARTBEAT - time.monotonic()))


async def run_case(
    case: str, url: str, args: argparse.Namespace, subjects: Subjects
) -> dict[str, object]:
    node = "n1" if case == "node" else "n2"
    bus = await Bus.connect([url], subjects, "address", name=node, persistent=False)
    grants: list[float] = []

    async def ignore(_: PlacementDecided) -> None:
        pass

    if case == "node":  # what the address service consumes, on its loop
        await bus.subscribe(subjects.all_placements, PlacementDecided, ignore)
    heart: Heart | None = None
    beating: asyncio.Task[None]
    if case == "node" and args.node_mode == "loop":
        beating = asyncio.create_task(beat_on_the_loop(bus, node, grants))
    else:

        def on_beat(beat: Beat) -> None:
            if beat.granted:
                grants.append(time.monotonic())

        heart = Heart(bus, node, NoFence(), lambda: (HEARTBEAT, LEASE), on_beat)
        await heart.start()
        beating = asyncio.create_task(heart.beating())
    try:
        await asyncio.sleep(2 * LEASE)  # granted, steady
        subject = subjects.all_placements.replace("*", "x")
        if case == "membership":
            subject = subjects.heartbeat("n1")
        proc = await flooder(url, subject, args.rate, args.size, args.seconds)
        start = time.monotonic()
        await proc.wait()
        end = time.monotonic()
        await asyncio.sleep(LEASE)  # what was queued drains (grants are timed as received)
        # The heart tells this loop its grants: the moment the loop heard, not the grant's
        # own (a busy loop hears late). Fine for the bound measured: a lapse shows either way.
        longest = gaps(grants, start, end)
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        if heart is not None:
            await heart.stop()
        await bus.close()
    return {
        "case": case,
        "mode": args.node_mode if case == "node" else "membership",
        "longest_gap_s": round(longest, 3),
        "lease_s": LEASE,
        "dropped_by_node_bus": sum(bus.dropped.values()),
    }


async def main(args: argparse.Namespace) -> None:
    subjects = Subjects(ROOT)
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp)) as url:
        cli = await Bus.connect([url], subjects, "cli", name="bench", persistent=False)
        spec = load_data(
            {
                "cluster": {"name": "flood", "timing": {"heartbeat": "200ms", "lease": "800ms"}},
                "nodes": [{"name": "n1"}, {"name": "n2"}],
                "groups": [],
            }
        )
        await store(cli, spec)
        await cli.close()
        env = {**os.environ, "VIGIL_NATS_URL": url, "VIGIL_ROOT": ROOT}
        if args.membership_path:
            env["PYTHONPATH"] = f"{args.membership_path}:{env.get('PYTHONPATH', '')}"
        membership = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "vigil.cli.main", "membership", "--name", "m1"),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            for case in args.cases.split(","):
                print(await run_case(case, url, args, subjects), flush=True)
        finally:
            membership.terminate()
            await membership.wait()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    p.add_argument("--cases", default="node,membership")
    p.add_argument("--node-mode", choices=("heart", "loop"), default="heart")
    p.add_argument("--rate", type=int, default=10_000, help="messages per second")
    p.add_argument("--size", type=int, default=100, help="bytes per message")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--membership-path", help="a checkout's services/ for membership to run")
    p.add_argument("--flooder", nargs=5, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse()
    if ARGS.flooder:
        url, subject, rate, size, seconds = ARGS.flooder
        asyncio.run(flood(url, subject, int(rate), int(size), float(seconds)))
    else:
        asyncio.run(main(ARGS))
