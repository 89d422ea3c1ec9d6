"""Section 3: the control plane at scale, without namespaces.

One nats-server (the embedded one's command line, plus a monitoring port so the server itself
counts the messages), the real membership and placement services as processes
(``python -m vigil.cli.main membership|placement``), and simulated node agents (``bench.simagent``:
a few processes, each hosting many nodes as asyncio tasks).

A failover: one node stops heartbeating (its agent goes silent and deaf, like a dead node);
measured from the events' own stamps: detection (node_lost - silence), then from node_lost to
the first and the last affected group re-placed (``PlacementDecided``) and acknowledged
(``AppStarted`` from the new node). Messages are counted by the server (``/varz``, ``/connz``),
so counting costs the measured processes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.core import embedded
from vigil.core.bus import Bus
from vigil.core.clusterconfig import store
from vigil.core.config import load_data
from vigil.core.subjects import Subjects
from vigil.testing.events import Recorder, ts
from vigil.wire.cluster import ClusterSpec, Timing
from vigil.wire.events import AppStarted, NodeJoined, NodeLost, PlacementDecided

from .failover import Log
from .procstat import Usage, Window

REPO = Path(__file__).resolve().parent.parent
NODES_PER_WORKER = 50
RAISED_MAX_PAYLOAD = "8MB"
FAILOVER_TIMEOUT = 300.0  # s; a failover still running then is reported as unfinished


def scale_spec(nodes: int, groups: int, layout: str, timing: Timing) -> ClusterSpec:
    """``spread``: group i prefers node i mod N; ``concentrated``: every group prefers n1 and
    fails over to the others round-robin. Each group lists three nodes."""
    names = [f"n{i + 1}" for i in range(nodes)]
    out = []
    for i in range(groups):
        if layout == "spread":
            seq = [names[(i + k) % nodes] for k in range(3)]
        else:
            others = names[1:]
            seq = [names[0], others[i % len(others)], others[(i + 1) % len(others)]]
        out.append(
            {
                "name": f"g{i + 1}",
                "address": f"10.{100 + i // 65024}.{(i // 254) % 256}.{i % 254 + 1}/16",
                "preferred": seq[0],
                "possible": seq[1:],
                "app": {"command": "true"},
            }
        )
    return load_data(  # no payload limit here: run() raises the server's when it must
        {
            "cluster": {
                "name": "scale",
                "timing": {"heartbeat": timing.heartbeat, "lease": timing.lease},
            },
            "nodes": [{"name": n} for n in names],
            "groups": out,
        },
        max_payload=None,
    )


class Tracker:
    """Where every group is and whether its new node acknowledged it, from the event stream."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.cursor = 0
        self.current: dict[str, tuple[str | None, int, float]] = {}  # group -> node, epoch, ts
        self.acked: dict[str, tuple[int, float]] = {}  # group -> epoch, ts of AppStarted

    def update(self) -> None:
        events = self.recorder.events
        while self.cursor < len(events):
            e = events[self.cursor]
            self.cursor += 1
            if isinstance(e, PlacementDecided):
                old = self.current.get(e.group)
                if old is None or e.epoch > old[1]:
                    self.current[e.group] = (e.node, e.epoch, ts(e))
            elif isinstance(e, AppStarted):
                old_ack = self.acked.get(e.group)
                if old_ack is None or e.epoch >= old_ack[0]:
                    self.acked[e.group] = (e.epoch, ts(e))

    def settled(self, groups: list[str], away_from: str | None = None) -> bool:
        """Every group placed (not on ``away_from``) and acknowledged at its current epoch."""
        self.update()
        for g in groups:
            cur = self.current.get(g)
            if cur is None or cur[0] is None or cur[0] == away_from:
                return False
            if self.acked.get(g, (0, 0.0))[0] != cur[1]:
                return False
        return True

    def holders(self) -> Counter[str]:
        self.update()
        return Counter(n for n, _, _ in self.current.values() if n is not None)


@dataclass
class ScaleRun:
    victim: str
    affected: int
    replaced: int = 0  # affected groups re-placed by the end of the window
    acknowledged: int = 0  # ... and acknowledged by their new node
    detection_s: float = math.nan
    first_decided_s: float = math.nan
    all_decided_s: float = math.nan
    all_acked_s: float = math.nan
    events: dict[str, int] = field(default_factory=dict)
    server_in: int = 0  # messages published to the server in the window (heartbeats included)
    server_out: int = 0  # messages delivered (our observer's share and heartbeats excluded)
    heartbeats: int = 0  # estimated heartbeats in the window
    placement_in: int = 0
    placement_out: int = 0
    window_s: float = 0.0
    error: str | None = None


@dataclass
class ScaleCase:
    nodes: int
    groups: int
    layout: str
    max_payload: str = "default (1 MB)"
    config_bytes: int = 0
    startup_s: float = math.nan  # config applied -> every group placed and acknowledged
    idle: dict[str, Usage] = field(default_factory=dict)
    idle_poll: dict[str, Usage] = field(default_factory=dict)
    poll_rate: float = math.nan  # config reads per second achieved while polling
    poll_bytes_s: float = math.nan  # server out bytes/s while polling
    runs: list[ScaleRun] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


class ScaleError(RuntimeError):
    pass


class ControlPlane:
    def __init__(self, workdir: Path, spec: ClusterSpec, max_payload: str | None, log: Log) -> None:
        self.dir = workdir
        self.spec = spec
        self.max_payload = max_payload
        self.log = log
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.recorder = Recorder()
        self.tracker = Tracker(self.recorder)
        self.worker_of: dict[str, int] = {}
        self.commands: list[str] = []

    # -- processes --------------------------------------------------------------------------
    def spawn(self, role: str, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with (self.dir / f"{role}.log").open("ab") as log:
            self.procs[role] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.dir,
            )  # fmt: skip
        if not role.startswith("agents-") or role == "agents-0":
            self.commands.append(" ".join(argv))

    async def start(self) -> float:
        """Start everything, apply the file; returns the time to place and acknowledge it all."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        port, self.mport = embedded.free_port(), embedded.free_port()
        argv = [*embedded.server_command("127.0.0.1", port, self.dir), "-m", str(self.mport)]
        if self.max_payload:
            (self.dir / "server.conf").write_text(f"max_payload: {self.max_payload}\n")
            argv += ["-c", str(self.dir / "server.conf")]
        self.spawn("nats-server", argv)
        await asyncio.to_thread(embedded.wait_ready, "127.0.0.1", port)
        self.url = f"nats://127.0.0.1:{port}"
        self.bus = await Bus.connect([self.url], Subjects(), "bench", name="observer")
        await self.recorder.start(self.bus)
        for role in ("membership", "placement"):
            self.spawn(role, [sys.executable, "-m", "vigil.cli.main", role, "--nats", self.url])
        t_apply = time.time()
        try:
            await store(self.bus, self.spec)
        except Exception as exc:
            raise ScaleError(
                f"applying the cluster file failed: {type(exc).__name__}: {exc}"
            ) from exc
        names = [n.name for n in self.spec.nodes]
        hb = self.spec.cluster.timing.heartbeat
        for w in range(math.ceil(len(names) / NODES_PER_WORKER)):
            chunk = names[w * NODES_PER_WORKER : (w + 1) * NODES_PER_WORKER]
            for n in chunk:
                self.worker_of[n] = w
            self.spawn(
                f"agents-{w}",
                [
                    sys.executable, "-m", "bench.simagent", "--nats", self.url,
                    "--nodes", ",".join(chunk), "--heartbeat", str(hb),
                    "--ctl", f"vbench.ctl.{w}", "--name", f"bench-agents-{w}",
                ],
            )  # fmt: skip
        groups = [g.name for g in self.spec.groups]
        deadline = time.monotonic() + 60 + len(groups) / 50
        while not self.tracker.settled(groups):
            self.check_alive()
            if time.monotonic() > deadline:
                placed = sum(1 for g in groups if g in self.tracker.current)
                raise ScaleError(f"initial placement incomplete: {placed}/{len(groups)} placed")
            await asyncio.sleep(0.1)
        last = max(t for _, t in self.tracker.acked.values())
        return last - t_apply

    def check_alive(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise ScaleError(f"{role} exited with {proc.returncode}; see {self.dir / role}.log")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.bus.close()
        for proc in reversed(list(self.procs.values())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)

    # -- control and measurement ------------------------------------------------------------
    async def ctl(self, worker: int, req: dict[str, Any]) -> dict[str, Any]:
        msg = await self.bus.nc.request(
            f"vbench.ctl.{worker}", json.dumps(req).encode(), timeout=10
        )
        return dict(json.loads(msg.data))

    async def all_workers(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        return [await self.ctl(w, req) for w in sorted(set(self.worker_of.values()))]

    def monitor(self, what: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.mport}/{what}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.load(resp))

    async def server(self) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
        varz = await asyncio.to_thread(self.monitor, "varz")
        connz = await asyncio.to_thread(self.monitor, "connz?limit=10000")
        conns: dict[str, dict[str, int]] = {}
        for c in connz.get("connections", []):
            name = str(c.get("name", "")).split("@")[0]
            agg = conns.setdefault(name, Counter())
            for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes"):
                agg[k] += int(c.get(k, 0))
        return varz, conns

    def pids(self) -> dict[str, int]:
        return {role: p.pid for role, p in self.procs.items()}

    async def usage(self, seconds: float) -> dict[str, Usage]:
        pids = self.pids()
        window = Window(pids.values())
        await asyncio.sleep(seconds)
        got = window.usage()
        return {role: got[pid] for role, pid in pids.items() if pid in got}

    async def failover(self, victim: str, timeout: float) -> ScaleRun:
        self.tracker.update()
        affected = [g for g, (n, _, _) in self.tracker.current.items() if n == victim]
        run = ScaleRun(victim, len(affected))
        varz0, conns0 = await self.server()
        await asyncio.sleep(random.uniform(0, self.spec.cluster.timing.heartbeat))  # any phase
        reply = await self.ctl(self.worker_of[victim], {"op": "stop", "node": victim})
        t_stop = float(reply["t"])
        deadline = time.monotonic() + timeout
        while not self.tracker.settled(affected, away_from=victim):
            if time.monotonic() > deadline:
                run.error = "not every affected group was re-placed and acknowledged in time"
                break
            await asyncio.sleep(0.02)
        t_done = time.time()
        await asyncio.sleep(0.5)  # the tail: acknowledgements' KV writes, watches
        varz1, conns1 = await self.server()
        t_end = time.time()
        run.window_s = t_end - t_stop
        lost = self.recorder.find(NodeLost, t_stop - 0.05, lambda e: e.node == victim)
        if lost is None:
            run.error = "no node_lost event"
        else:
            t_lost = ts(lost)
            run.detection_s = t_lost - t_stop
            cur, ack = self.tracker.current, self.tracker.acked
            moved = [g for g in affected if cur[g][0] not in (None, victim) and cur[g][2] >= t_stop]
            done = [g for g in moved if g in ack and ack[g][0] == cur[g][1]]
            run.replaced, run.acknowledged = len(moved), len(done)
            decided = [cur[g][2] for g in moved]
            acked = [ack[g][1] for g in done]
            if decided:
                run.first_decided_s = min(decided) - t_lost
                run.all_decided_s = max(decided) - t_lost
            if acked and run.error is None:
                run.all_acked_s = max(acked) - t_lost
        run.events = dict(self.recorder.count(t_stop - 0.05, t_done + 0.5))
        obs_in = conns1.get("observer", {}).get("out_msgs", 0) - conns0.get("observer", {}).get(
            "out_msgs", 0
        )
        run.server_in = int(varz1["in_msgs"]) - int(varz0["in_msgs"])
        hb = self.spec.cluster.timing.heartbeat
        run.heartbeats = round((len(self.spec.nodes) - 1) * run.window_s / hb)
        # membership is the heartbeats' only subscriber: each is delivered once
        delivered = int(varz1["out_msgs"]) - int(varz0["out_msgs"])
        run.server_out = delivered - obs_in - run.heartbeats
        p0, p1 = conns0.get("placement", {}), conns1.get("placement", {})
        run.placement_in = p1.get("in_msgs", 0) - p0.get("in_msgs", 0)
        run.placement_out = p1.get("out_msgs", 0) - p0.get("out_msgs", 0)
        # Bring the node back (groups stay where they are: failback is manual).
        t = time.time()
        await self.ctl(self.worker_of[victim], {"op": "start", "node": victim})
        deadline = time.monotonic() + 30
        while self.recorder.find(NodeJoined, t, lambda e: e.node == victim) is None:
            if time.monotonic() > deadline:
                raise ScaleError(f"{victim} did not rejoin")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        return run


async def run_case(
    base: Path,
    nodes: int,
    groups: int,
    layout: str,
    runs: int,
    idle_s: float,
    poll: bool,
    timing: Timing,
    log: Log,
    commands: list[str],
) -> ScaleCase:
    case = ScaleCase(nodes, groups, layout)
    spec = scale_spec(nodes, groups, layout, timing)
    from vigil.core.config import encode as encode_spec

    case.config_bytes = len(encode_spec(spec))
    max_payload: str | None = None
    for attempt in range(runs if layout == "concentrated" else 1):
        cp = ControlPlane(base / f"scale-{nodes}n-{groups}g-{layout}", spec, max_payload, log)
        try:
            try:
                startup = await cp.start()
            except ScaleError as exc:
                if "payload" in str(exc).lower() and max_payload is None:
                    case.notes.append(
                        f"with the default server limits: {exc} (the cluster file is "
                        f"{case.config_bytes / 1e6:.2f} MB, stored as one KV value); "
                        f"measured with max_payload raised to {RAISED_MAX_PAYLOAD}"
                    )
                    log(
                        f"  {nodes} nodes / {groups} groups: {exc}; retrying with max_payload "
                        f"{RAISED_MAX_PAYLOAD}"
                    )
                    await cp.stop()
                    max_payload = RAISED_MAX_PAYLOAD
                    case.max_payload = RAISED_MAX_PAYLOAD
                    cp = ControlPlane(cp.dir, spec, max_payload, log)
                    startup = await cp.start()
                else:
                    raise
            if not commands:
                commands.extend(cp.commands)
            if attempt == 0:
                case.startup_s = startup
                log(
                    f"  {nodes} nodes / {groups} groups ({layout}): placed and acknowledged "
                    f"in {startup:.1f} s"
                )
                await asyncio.sleep(2.0)
                case.idle = await cp.usage(idle_s)
                if poll:
                    before = sum(
                        int(r["polls"]) for r in await cp.all_workers({"op": "poll", "on": True})
                    )
                    t = time.monotonic()
                    v0, _ = await cp.server()
                    case.idle_poll = await cp.usage(idle_s)
                    v1, _ = await cp.server()
                    after = sum(
                        int(r["polls"]) for r in await cp.all_workers({"op": "poll", "on": False})
                    )
                    dt = time.monotonic() - t
                    case.poll_rate = (after - before) / dt
                    case.poll_bytes_s = (int(v1["out_bytes"]) - int(v0["out_bytes"])) / dt
                    await asyncio.sleep(2.0)  # let the backlog drain
            else:
                await asyncio.sleep(2.0)  # the start-up's last messages are out of the window
            names = [n.name for n in spec.nodes]
            victims = ["n1"] if layout == "concentrated" else names[0::2][:runs]
            for victim in victims:
                run = await cp.failover(victim, timeout=min(FAILOVER_TIMEOUT, 60 + groups / 20))
                case.runs.append(run)
                log("  " + describe(case, run))
        except ScaleError as exc:
            case.error = str(exc)
            log(f"  {nodes} nodes / {groups} groups ({layout}): ERROR {exc}")
            break
        finally:
            await cp.stop()
            if case.error is None:
                shutil.rmtree(cp.dir, ignore_errors=True)
    return case


def describe(case: ScaleCase, run: ScaleRun) -> str:
    def ms(v: float) -> str:
        return f"{v * 1000:.0f}"

    return (
        f"{case.nodes}n/{case.groups}g {case.layout}: lose {run.victim} ({run.affected} groups): "
        f"detect {ms(run.detection_s)} ms, "
        f"re-placed {ms(run.first_decided_s)}..{ms(run.all_decided_s)} ms, "
        f"acknowledged {ms(run.all_acked_s)} ms after node_lost; "
        f"events {sum(run.events.values())}, "
        f"server in {run.server_in} (~{run.heartbeats} heartbeats) out {run.server_out}"
        + (
            f" [{run.error}: {run.replaced} re-placed, {run.acknowledged} acknowledged]"
            if run.error
            else ""
        )
    )
