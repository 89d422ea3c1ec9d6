"""Section 1: failover in the lab, seen by a real client in the client namespace.

One lab per timing set: two nodes and one group (``web1``, the lab's demo app, preferred on n1,
possible n2). The client probes the group's address every 10 ms with a 50 ms timeout
(``vigil.lab.probe``, through ``vigil.lab.demo.Probe``).

node loss   kill the node that serves ``web1`` (SIGKILL everything in its namespace, link down:
            ``Lab.kill``), wait for the first answer from the survivor, revive the victim, let it
            rejoin. The next run kills the other node, so the lab never has to be rebuilt and
            every run is the same real failover, in alternating directions.
app crash   SIGKILL the app's process (the pid it prints) and wait until the group serves again
            (the supervisor restarts it after its back-off).

The hops come from the events' own ``ts`` stamps; all processes share this machine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from vigil.core import status as status_mod
from vigil.core.bus import Bus
from vigil.core.config import load_data
from vigil.lab.lab import Lab, LabState, vip
from vigil.lab.netns import LabError
from vigil.lab.specs import generated
from vigil.testing.events import Recorder, ts
from vigil.testing.probe import Answer, Probe
from vigil.wire.cluster import ClusterSpec, Timing
from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    AppFailed,
    AppStarted,
    AppStopped,
    IntentChanged,
    NodeJoined,
    NodeLost,
    PlacementDecided,
)

from .cleanup import sweep
from .netfault import vigil_node_loss
from .procstat import Usage, Window

GROUP = "web1"
TIMINGS: dict[str, Timing] = {
    "default": Timing(),
    "tuned": Timing(heartbeat=0.05, lease=0.2),
}
#: Crashes are spaced further apart than this, and the group's restart window (when the schema
#: has one) is set to it, so every crash is a *first* failure: the bench measures one crash,
#: not the restart policy's escalation after several.
RESTART_WINDOW = 2.0
_SERVED = re.compile(r"served by (\S+) group \S+ pid (\d+)")

Log = Callable[[str], None]


def bench_spec(timing: Timing, nodes: int = 2, groups: int = 1) -> ClusterSpec:
    """The lab's generated cluster with ``timing``; robust to new schema fields."""
    raw = msgspec.to_builtins(generated(nodes, groups=groups))
    raw["cluster"]["timing"] = {"heartbeat": timing.heartbeat, "lease": timing.lease}
    for group in raw["groups"]:
        if isinstance(group.get("restart"), dict) and "window" in group["restart"]:
            group["restart"]["window"] = RESTART_WINDOW
    return load_data(raw)


def served_by(answer: Answer) -> tuple[str, int] | None:
    m = _SERVED.search(answer.text) if answer.ok else None
    return (m.group(1), int(m.group(2))) if m else None


@dataclass
class NodeLossRun:
    victim: str
    t_fault: float
    kill_s: float  # how long the kill procedure itself took
    served_s: float | None = None  # fault -> first answer from the survivor
    outage_s: float | None = None  # last answer before -> first answer after
    hops: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # failed attempts by kind
    silent_for: float | None = None
    error: str | None = None


@dataclass
class AppCrashRun:
    node: str
    t_fault: float
    served_s: float | None = None
    same_node: bool = True
    hops: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass
class SwitchRun:
    source: str
    target: str
    t_request: float
    gap_s: float | None = None  # last answer from the old node -> first from the new one
    total_s: float | None = None  # operator's request -> first answer from the new node
    marks: dict[str, float] = field(default_factory=dict)  # event -> s after the intent
    failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None


SWITCH_MARKS = (
    "app stopped (old)",
    "address released (old)",
    "placed (new)",
    "address acquired (new)",
    "app started (new)",
    "first served (new)",
)
NODE_HOPS = ("detection", "decision", "address", "app", "first served")
CRASH_HOPS = ("exit seen", "restart", "first served")


def client_probe(state: LabState, target: str) -> Probe:
    """The benchmarks' client: an attempt every 10 ms with a 50 ms timeout, from the lab's
    client namespace (the same settings as keepalived's anchor measurement)."""
    return Probe(state.ns("client"), target, interval=0.01, timeout=0.05, duration=120)


@dataclass
class Outage:
    """What the client saw around one fault: who was killed, when the survivor answered."""

    victim: str
    t_fault: float
    kill_s: float = 0.0  # how long the kill procedure itself took
    served_at: float | None = None  # the survivor's first answer (probe clock)
    served_s: float | None = None  # fault -> first answer from the survivor
    outage_s: float | None = None  # last answer before -> first answer after
    failures: dict[str, int] = field(default_factory=dict)  # failed attempts by kind
    error: str | None = None


async def client_outage(
    probe: Probe, kill: Callable[[str], Awaitable[float]], phase: float, tail: float
) -> Outage:
    """Wait for a first answer, kill the node that gave it at a random phase of ``phase``
    (the runs must not be in step with the protocol's own timer), then wait for the first
    answer from another node; ``tail`` seconds more let the last events arrive."""
    first = await probe.wait_for(lambda a: served_by(a) is not None, 30, "a first answer")
    sb = served_by(first)
    assert sb is not None
    victim = sb[0]
    await asyncio.sleep(0.3 + random.uniform(0, phase))
    t0 = await kill(victim)
    out = Outage(victim, t0, time.time() - t0)
    try:
        after = await probe.wait_for(
            lambda a: a.t > t0 and (s := served_by(a)) is not None and s[0] != victim,
            30,
            "an answer from the survivor",
        )
    except TimeoutError as exc:
        out.error = str(exc)
        return out
    await asyncio.sleep(tail)
    answers = probe.answers
    last_ok = max((a.t for a in answers if a.ok and a.t <= t0), default=t0)
    out.served_at, out.served_s, out.outage_s = after.t, after.t - t0, after.t - last_ok
    out.failures = dict(Counter(a.text for a in answers if t0 < a.t < after.t and not a.ok))
    return out


class LabBench:
    """A lab with one timing set, a host connection and an event recorder."""

    def __init__(
        self, prefix: str, timing: Timing, log: Log, nodes: int = 2, groups: int = 1
    ) -> None:
        self.lab = Lab(prefix)
        self.spec = bench_spec(timing, nodes, groups)
        self.timing = timing
        self.log = log
        self.recorder = Recorder()
        self.target = f"{vip(self.spec, GROUP)}:8080"

    async def __aenter__(self) -> LabBench:
        await asyncio.to_thread(fresh, self.lab)
        started = time.monotonic()
        try:
            self.state: LabState = await asyncio.to_thread(self.lab.up, self.spec)
            self.up_s = time.monotonic() - started
            self.bus: Bus = await self.lab.connect(self.state, "bench")
            await self.recorder.start(self.bus)
        except BaseException:
            await asyncio.to_thread(teardown, self.lab)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.bus.close()
        await asyncio.to_thread(teardown, self.lab)

    # -- helpers --------------------------------------------------------------------------
    def probe(self) -> Probe:
        probe = client_probe(self.state, self.target)
        self.probe_command = " ".join(probe.argv)
        return probe

    @staticmethod
    async def stop_probe(probe: Probe) -> None:
        await asyncio.to_thread(probe.stop)

    async def wait_event(self, find: Callable[[], object], timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while (hit := find()) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return hit

    def pids(self) -> dict[str, int]:
        state = LabState.load(self.state.prefix) or self.state
        # Kept processes: the keeper's current child, under the names the report uses (the
        # first replica or server stands for its kind).
        names = {"membership-1": "membership", "placement-1": "placement", "nats-1": "nats-server"}
        out: dict[str, int] = {}
        for p in state.procs:
            pid = self.lab.kept_status(p.role).get("pid") if p.kept else p.pid
            if isinstance(pid, int):
                out[names.get(p.role, p.role)] = pid
        return out

    async def idle_usage(self, seconds: float) -> dict[str, Usage]:
        """CPU and RSS of every Vigil process of the lab over ``seconds`` of idle cluster."""
        pids = self.pids()
        window = Window(pids.values())
        await asyncio.sleep(seconds)
        usage = window.usage()
        return {role: usage[pid] for role, pid in pids.items() if pid in usage}

    # -- node loss --------------------------------------------------------------------------
    async def node_loss(self) -> NodeLossRun:
        async def kill(victim: str) -> float:
            t0, _ = await asyncio.to_thread(vigil_node_loss, self.lab.prefix, victim)
            return float(t0)

        probe = self.probe()
        try:
            out = await client_outage(probe, kill, self.timing.heartbeat, tail=0.2)
        finally:
            await self.stop_probe(probe)
        run = NodeLossRun(out.victim, out.t_fault, out.kill_s, error=out.error)
        if out.served_at is None:
            return run
        run.served_s, run.outage_s, run.failures = out.served_s, out.outage_s, out.failures
        self.hops(run, out.served_at)
        await self.rejoin(out.victim)
        return run

    def hops(self, run: NodeLossRun, served_at: float) -> None:
        r, t0, victim = self.recorder, run.t_fault, run.victim
        lost = r.find(NodeLost, t0, lambda e: e.node == victim)
        decided = r.find(PlacementDecided, t0, lambda e: e.group == GROUP and e.node != victim)
        if lost is None or decided is None:
            run.error = (
                f"events missing: node_lost={lost is not None} decided={decided is not None}"
            )
            return
        run.silent_for = lost.silent_for
        epoch = decided.epoch
        acquired = r.find(AddressAcquired, t0, lambda e: e.group == GROUP and e.epoch == epoch)
        started = r.find(AppStarted, t0, lambda e: e.group == GROUP and e.epoch == epoch)
        marks = [t0, ts(lost), ts(decided)]
        marks += [ts(acquired) if acquired else float("nan")]
        marks += [ts(started) if started else float("nan"), served_at]
        run.hops = {name: marks[i + 1] - marks[i] for i, name in enumerate(NODE_HOPS)}

    async def rejoin(self, node: str) -> None:
        """Revive ``node`` and wait until it is back and has tidied up after its death."""
        t = time.time()
        await asyncio.to_thread(self.lab.revive, node)
        r = self.recorder
        joined = await self.wait_event(lambda: r.find(NodeJoined, t, lambda e: e.node == node), 30)
        if joined is None:
            raise LabError(f"{node} did not rejoin within 30 s")
        # Its address service drops the address it died holding: proof that it reconciled.
        await self.wait_event(
            lambda: r.find(AddressReleased, t, lambda e: e.node == node and e.group == GROUP), 5
        )
        await status_wait(self.bus, lambda v: all(n.state == "up" for n in v.nodes), 30)
        # The failover landed on the last node of a two-node list, which disables switching
        # (Serviceguard's rule) until an operator re-enables it: do what the operator does.
        rc, out = await self.cli("enable", GROUP)
        if rc != 0 and "invalid choice" not in out:
            raise LabError(f"vigil enable {GROUP} failed: {out.strip()}")
        await asyncio.sleep(1.0)  # its supervisor's caches are warm too

    async def cli(self, *args: str) -> tuple[int, str]:
        """``vigil ARGS --nats <the lab's door>``, as an operator would type it."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vigil.cli.main", *args, "--nats", self.state.host_url,
            *self.lab.creds_args(self.state, "operator"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    # -- app crash --------------------------------------------------------------------------
    async def app_crash(self) -> AppCrashRun:
        probe = self.probe()
        try:
            first = await probe.wait_for(lambda a: served_by(a) is not None, 20, "a first answer")
            sb = served_by(first)
            assert sb is not None
            node, pid = sb
            await asyncio.sleep(0.3)
            t0 = time.time()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            run = AppCrashRun(node, t0)
            try:
                after = await probe.wait_for(
                    lambda a: a.t > t0 and (s := served_by(a)) is not None and s[1] != pid,
                    30,
                    "an answer from a restarted app",
                )
            except TimeoutError as exc:
                run.error = str(exc)
                return run
            await asyncio.sleep(0.2)
        finally:
            await self.stop_probe(probe)
        new = served_by(after)
        run.same_node = new is not None and new[0] == node
        run.served_s = after.t - t0
        run.failures = dict(
            Counter(a.text for a in probe.answers if t0 < a.t < after.t and not a.ok)
        )
        r = self.recorder
        failed = r.find(AppFailed, t0, lambda e: e.group == GROUP)
        started = r.find(AppStarted, t0, lambda e: e.group == GROUP)
        if failed is not None and started is not None:
            marks = [t0, ts(failed), ts(started), after.t]
            run.hops = {name: marks[i + 1] - marks[i] for i, name in enumerate(CRASH_HOPS)}
        else:
            run.error = (
                f"events missing: app_failed={failed is not None} started={started is not None}"
            )
        # The next crash must be a first failure again: outside the restart window.
        await asyncio.sleep(max(0.0, t0 + RESTART_WINDOW + 0.3 - time.time()))
        return run


def fresh(lab: Lab) -> None:
    """Remove a lab of ours left behind, *and its directory*: ``Lab.down`` keeps the JetStream
    store in ``<lab dir>/nats``, so a new lab with the same prefix would start from the old
    placements."""
    teardown(lab)
    shutil.rmtree(lab.dir, ignore_errors=True)


def teardown(lab: Lab) -> None:
    """``Lab.down``, then whatever of ours outlived it (see bench/cleanup.py)."""
    lab.down()
    leftovers = sweep(lab.dir)
    if leftovers:
        print(
            f"bench: killed {len(leftovers)} leftover process(es) of lab {lab.prefix}: {leftovers}",
            flush=True,
        )


async def _switchover(lb: LabBench) -> SwitchRun:
    probe = lb.probe()
    try:
        first = await probe.wait_for(lambda a: served_by(a) is not None, 20, "a first answer")
        sb = served_by(first)
        assert sb is not None
        source = sb[0]
        target = next(n for n in lb.state.nodes if n != source)
        await asyncio.sleep(0.3)
        t0 = time.time()
        run = SwitchRun(source, target, t0)
        rc, out = await lb.cli("switchover", GROUP, "--to", target)
        if rc != 0:
            run.error = out.strip().splitlines()[-1] if out.strip() else f"exit {rc}"
            return run
        try:
            after = await probe.wait_for(
                lambda a: a.t > t0 and (s := served_by(a)) is not None and s[0] == target,
                30,
                "an answer from the switchover's target",
            )
        except TimeoutError as exc:
            run.error = str(exc)
            return run
        await asyncio.sleep(0.2)
    finally:
        await lb.stop_probe(probe)
    olds = [a.t for a in probe.answers if a.t < after.t and (s := served_by(a)) and s[0] == source]
    last_old = max(olds, default=t0)
    run.gap_s = after.t - last_old
    run.total_s = after.t - t0
    run.failures = dict(
        Counter(a.text for a in probe.answers if last_old < a.t < after.t and not a.ok)
    )
    r = lb.recorder
    intent = r.find(IntentChanged, t0, lambda e: e.group == GROUP)
    if intent is None:
        run.error = "no intent_changed event"
        return run

    def g(
        e: AppStopped | AddressReleased | PlacementDecided | AddressAcquired | AppStarted,
    ) -> bool:
        return e.group == GROUP

    found = [
        r.find(AppStopped, t0, lambda e: g(e) and e.node == source),
        r.find(AddressReleased, t0, lambda e: g(e) and e.node == source),
        r.find(PlacementDecided, t0, lambda e: g(e) and e.node == target),
        r.find(AddressAcquired, t0, lambda e: g(e) and e.node == target),
        r.find(AppStarted, t0, lambda e: g(e) and e.node == target),
    ]
    times = [ts(e) if e is not None else float("nan") for e in found] + [after.t]
    run.marks = {name: t - ts(intent) for name, t in zip(SWITCH_MARKS, times, strict=True)}
    run.marks["intent (after the command started)"] = ts(intent) - t0
    await asyncio.sleep(0.5)
    return run


async def status_wait(
    bus: Bus, ok: Callable[[status_mod.StatusView], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not ok(await status_mod.read(bus)):
        if time.monotonic() > deadline:
            raise LabError("timed out waiting for the lab's status")
        await asyncio.sleep(0.1)


@dataclass
class FailoverResult:
    timing_name: str
    timing: Timing
    lab_up_s: float
    node_loss: list[NodeLossRun]
    app_crash: list[AppCrashRun]
    switchover: list[SwitchRun]
    idle: dict[str, Usage]
    restart_policy: str
    probe_command: str = ""


async def run_timing(
    prefix: str, name: str, runs_node: int, runs_app: int, runs_switch: int, idle_s: float, log: Log
) -> FailoverResult:
    timing = TIMINGS[name]
    async with LabBench(prefix, timing, log) as lb:
        log(
            f"  lab {prefix} up in {lb.up_s:.1f} s (heartbeat {timing.heartbeat * 1000:.0f} ms, "
            f"lease {timing.lease * 1000:.0f} ms)"
        )
        await asyncio.sleep(1.0)
        idle = await lb.idle_usage(idle_s)
        group = lb.spec.group(GROUP)
        policy = "supervisor's built-in back-off"
        restart = getattr(group, "restart", None)
        if restart is not None:
            policy = msgspec.json.encode(restart).decode()
        node_runs: list[NodeLossRun] = []
        for i in range(runs_node):
            run = await lb.node_loss()
            node_runs.append(run)
            log(f"  node loss {i + 1}/{runs_node}: " + describe_node_run(run))
        crash_runs: list[AppCrashRun] = []
        for i in range(runs_app):
            crun = await lb.app_crash()
            crash_runs.append(crun)
            log(f"  app crash {i + 1}/{runs_app}: " + describe_crash_run(crun))
        switch_runs: list[SwitchRun] = []
        for i in range(runs_switch):
            srun = await _switchover(lb)
            switch_runs.append(srun)
            log(f"  switchover {i + 1}/{runs_switch}: " + describe_switch_run(srun))
        return FailoverResult(
            name,
            timing,
            lb.up_s,
            node_runs,
            crash_runs,
            switch_runs,
            idle,
            policy,
            getattr(lb, "probe_command", ""),
        )


def describe_node_run(run: NodeLossRun) -> str:
    if run.served_s is None:
        return f"kill {run.victim}: ERROR {run.error}"
    hops = " ".join(f"{k}={v * 1000:.0f}" for k, v in run.hops.items())
    return f"kill {run.victim}: served after {run.served_s * 1000:.0f} ms ({hops})" + (
        f" [{run.error}]" if run.error else ""
    )


def describe_switch_run(run: SwitchRun) -> str:
    if run.gap_s is None or run.total_s is None:
        return f"{run.source} -> {run.target}: ERROR {run.error}"
    marks = " ".join(f"{k.split(' (')[0]}={v * 1000:.0f}" for k, v in run.marks.items())
    return (
        f"{run.source} -> {run.target}: gap {run.gap_s * 1000:.0f} ms, served on the new node "
        f"{run.total_s * 1000:.0f} ms after the command ({marks}) {run.failures}"
    )


def describe_crash_run(run: AppCrashRun) -> str:
    if run.served_s is None:
        return f"crash on {run.node}: ERROR {run.error}"
    hops = " ".join(f"{k}={v * 1000:.0f}" for k, v in run.hops.items())
    where = "same node" if run.same_node else "ANOTHER node"
    return f"crash on {run.node}: served after {run.served_s * 1000:.0f} ms, {where} ({hops})"
