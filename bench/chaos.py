"""``make chaos``: seeded randomized fault schedules over the lab, judged from the wire.

``python -m bench.chaos [--seed S] [--schedules N] [--out docs/reliability.md]`` (root). One
lab (four nodes, four groups with different preferred nodes, three NATS servers, 2+2 replicas);
each schedule is one to three overlapping faults drawn from: node kill (then revive), freeze
(then thaw), partition (then heal), a membership or placement replica killed (its keeper
restarts it), a NATS server held down (then started). Then every fault is healed,
``vigil enable`` is run for groups whose switching went off, and the cluster must converge.

The checker is independent of Vigil's own view, in the client namespace:

- ARP: a who-has for every group address every 20 ms; two MACs answering for one address in one
  round is an **overlap** (two nodes answering for one address);
- convergence: after the last heal, every group that ``vigil status`` places on a node must be
  served (HTTP) by that node, and every node must be shown up, within ``--converge`` seconds
  (5 by default; the time it took is recorded up to 30 s).

Writes a report (schedules, overlaps, non-converged schedules with seeds, convergence after heal
p50/p99/max per fault kind) to ``--out``. A schedule is replayed by its seed: ``--seed S
--schedules 1`` runs exactly the schedule the report names ``S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import msgspec

from vigil.core import redundancy
from vigil.core import status as status_mod
from vigil.core.bus import Bus
from vigil.lab.lab import CLIENT_IP, Lab, LabState
from vigil.lab.netns import LabError
from vigil.lab.specs import generated
from vigil.testing.netns import http_get, in_netns, mac

NODES = 4
GROUPS = 4
ROUND = 0.02  # the ARP checker's round: a who-has for every address every 20 ms
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
LIMIT = 30.0  # seconds after the last heal: a schedule not converged by then is stuck


# -- schedules (pure: a seed in, the same faults out) ----------------------------------------------
@dataclass(frozen=True)
class Fault:
    kind: str  # node-kill | freeze | partition | replica | nats
    target: str
    start: float  # seconds after the schedule starts
    length: float  # until its heal

    def __str__(self) -> str:
        return f"{self.kind} {self.target} @{self.start:.1f}s for {self.length:.1f}s"


KINDS = ("node-kill", "freeze", "partition", "replica", "nats")


def schedule(seed: int, nodes: list[str]) -> list[Fault]:
    """One to three overlapping faults on distinct targets."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    used: set[str] = set()
    start = 0.0
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(KINDS)
        if kind in ("node-kill", "freeze", "partition"):
            choices = [n for n in nodes if n not in used]
        elif kind == "replica":
            choices = [f"{r}-{i}" for r in ("membership", "placement") for i in (1, 2)]
        else:
            choices = [f"nats-{i}" for i in (1, 2, 3)]
        choices = [c for c in choices if c not in used]
        if not choices:
            continue
        target = rng.choice(choices)
        used.add(target)
        faults.append(Fault(kind, target, round(start, 2), round(rng.uniform(0.5, 3.0), 2)))
        start += rng.uniform(0.0, 1.5)
    return faults


# -- the wire ------------------------------------------------------------------------------------
@dataclass
class Overlap:
    t: float
    vip: str
    macs: list[str]


class ArpChecker:
    """Every ``ROUND``: a who-has for each address; the MACs that answer in that round."""

    def __init__(self, ns: str, vips: list[str]) -> None:
        self.vips = [IPv4Address(v) for v in vips]
        self.overlaps: list[Overlap] = []
        self.stopping = threading.Event()
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind(("eth0", ETH_P_ARP))
        own = bytes.fromhex(mac(ns).replace(":", ""))
        self.requests = [
            b"\xff" * 6 + own + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + own + IPv4Address(CLIENT_IP).packed
            + b"\x00" * 6 + v.packed
            for v in self.vips
        ]  # fmt: skip
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with self.sock:
            while not self.stopping.is_set():
                for request in self.requests:
                    self.sock.send(request)
                answered: dict[bytes, set[str]] = {}
                end = time.monotonic() + ROUND
                while (left := end - time.monotonic()) > 0:
                    self.sock.settimeout(left)
                    try:
                        frame, addr = self.sock.recvfrom(2048)
                    except TimeoutError:
                        break
                    if addr[2] == PACKET_OUTGOING or len(frame) < 42:
                        continue
                    if struct.unpack("!H", frame[20:22])[0] == 2:  # a reply
                        mac = ":".join(f"{b:02x}" for b in frame[22:28])
                        answered.setdefault(frame[28:32], set()).add(mac)
                for vip, macs in answered.items():
                    if len(macs) > 1:
                        self.overlaps.append(
                            Overlap(time.time(), str(IPv4Address(vip)), sorted(macs))
                        )

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


def served_by(ns: str, vip: str) -> str | None:
    """Who serves ``vip``:8080 (the demo app says ``served by NODE``), from ``ns``."""
    body = http_get(ns, vip, 8080, timeout=0.3)
    return body.split()[2] if body and body.startswith("served by ") else None


# -- one schedule --------------------------------------------------------------------------------
@dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    overlaps: list[Overlap] = field(default_factory=list)
    converged_s: float | None = None  # after the last heal
    stuck: str = ""  # what was still wrong when we gave up
    error: str = ""
    t0: float = 0.0  # wall-clock start of the schedule, to place the overlaps on its timeline
    settled_s: float = 0.0  # the wait for a redundant bus before the schedule began


class Chaos:
    def __init__(self, lab: Lab, state: LabState, converge: float) -> None:
        self.lab = lab
        self.state = state
        self.converge = converge
        self.urls = ",".join(state.host_urls)
        self.creds = lab.creds_args(state, "operator")
        self.vigil = [sys.executable, "-m", "vigil.cli.main"]
        self.loop = asyncio.new_event_loop()
        self.bus: Bus | None = None

    def status(self) -> dict[str, object] | None:
        """``vigil status -o json``, read in process (a CLI process costs ~0.5 s under load)."""
        try:
            if self.bus is None:
                self.bus = self.loop.run_until_complete(self.lab.connect(self.state, "chaos"))
            view = self.loop.run_until_complete(asyncio.wait_for(status_mod.read(self.bus), 2))
        except Exception:  # no answer now (a leader election, a server down): ask again
            return None
        raw: dict[str, object] = msgspec.to_builtins(view)
        return raw

    def wait_redundant(self, limit: float = LIMIT) -> float:
        """Seconds until every stream has a leader and every replica is current
        (``redundancy.degraded``): a schedule begins on a redundant bus. Without this a schedule
        could begin while the previous one's election was still pending, and killing the other
        lease bucket's leader was then a double fault (seed 86 of the 6546f54 run)."""
        began = time.monotonic()
        while time.monotonic() - began < limit:
            try:
                if self.bus is None:
                    self.bus = self.loop.run_until_complete(self.lab.connect(self.state, "chaos"))
                if not self.loop.run_until_complete(redundancy.degraded(self.bus)):
                    break
            except Exception:  # our server restarting: ask again
                pass
            time.sleep(0.1)
        return time.monotonic() - began

    def close(self) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.bus.close())
        self.loop.close()

    def apply(self, fault: Fault) -> None:
        match fault.kind:
            case "node-kill":
                self.lab.kill(fault.target)
            case "freeze":
                self.lab.freeze(fault.target)
            case "partition":
                self.lab.partition(fault.target)
            case "replica":
                self.lab.kill_process(fault.target)
            case "nats":
                self.lab.kill_process(fault.target, restart=False)

    def heal(self, fault: Fault) -> None:
        match fault.kind:
            case "node-kill":
                self.lab.revive(fault.target)
            case "freeze":
                self.lab.thaw(fault.target)
            case "partition":
                self.lab.heal(fault.target)
            case "nats":
                self.lab.start_process(fault.target)

    def run(self, seed: int, checker: ArpChecker) -> Outcome:
        out = Outcome(seed, schedule(seed, self.state.nodes))
        out.settled_s = self.wait_redundant()
        first = len(checker.overlaps)
        t0 = time.monotonic()
        out.t0 = time.time()
        events = sorted(
            [(f.start, 0, f) for f in out.faults]
            + [(f.start + f.length, 1, f) for f in out.faults],
            key=lambda e: (e[0], e[1]),
        )
        try:
            for at, heal, fault in events:
                if (wait := t0 + at - time.monotonic()) > 0:
                    time.sleep(wait)  # the schedule's own clock: faults happen at set times
                (self.heal if heal else self.apply)(fault)
        except LabError as exc:
            out.error = str(exc)
        healed = time.monotonic()
        out.converged_s, out.stuck = self.wait_converged(healed)
        out.overlaps = checker.overlaps[first:]
        return out

    def wait_converged(self, since: float, limit: float = LIMIT) -> tuple[float | None, str]:
        """Seconds until the wire agrees with the status (None: not within ``limit``), and
        the last disagreement seen (what took the time)."""
        enabled: set[str] = set()
        wrong, last = "no status", ""
        while time.monotonic() - since < limit:
            view = self.status()
            wrong = "no status" if view is None else self.mismatch(view, enabled)
            if not wrong:
                return time.monotonic() - since, last
            last = wrong
            time.sleep(0.05)
        return None, wrong

    def mismatch(self, view: dict[str, object], enabled: set[str]) -> str:
        nodes = view.get("nodes")
        groups = view.get("groups")
        assert isinstance(nodes, list) and isinstance(groups, list)
        down = [n["name"] for n in nodes if n["state"] != "up"]
        if down:
            return f"nodes shown lost: {down}"
        for g in groups:
            if g["switching"] == "disabled" and g["name"] not in enabled:
                enabled.add(g["name"])
                subprocess.run(
                    [*self.vigil, "enable", g["name"], "--nats", self.urls, *self.creds],
                    capture_output=True,
                    timeout=20,
                )
            vip = str(IPv4Interface(g["address"]).ip)
            if g["node"] is None or g["mode"] in ("halted", "offline"):
                return f"{g['name']} {g['mode']} (node {g['node']})"
            who = served_by(self.state.ns("client"), vip)
            if who != g["node"]:
                return f"{g['name']}: status says {g['node']}, served by {who}"
        return ""


# -- the report ----------------------------------------------------------------------------------
NOTE = (
    "A seed fixes the schedule (faults, targets, times), not the outcome: the services' own "
    'timing varies, so a failure may need a few replays. "last wrong" is the last '
    'disagreement seen before convergence (or at the 30 s limit); "no status" means '
    "`vigil status` got no answer within 2 s (JetStream electing leaders after a server died)."
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _has(outcome: Outcome, kind: str) -> bool:
    return any(f.kind == kind for f in outcome.faults)


def report(outcomes: list[Outcome], seed: int, converge: float, macs: dict[str, str]) -> str:
    overlapping = [o for o in outcomes if o.overlaps]
    late = [o for o in outcomes if o.converged_s is None or o.converged_s > converge]
    lines = [
        "# Reliability: randomized fault schedules",
        "",
        f"Written by `make chaos` (`python -m bench.chaos`), first seed {seed}, on "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Lab: "
        f"{NODES} nodes, {GROUPS} groups, three NATS servers (R3), two membership and two "
        "placement replicas, default timing. Checker in the client namespace: ARP for every "
        f"group address every {ROUND * 1000:.0f} ms, HTTP to each group after the last heal.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| schedules run | {len(outcomes)} |",
        f"| schedules with two nodes answering for one address | {len(overlapping)} |",
        f"| schedules not converged within {converge:g} s of the last heal | {len(late)} |",
    ]
    times = [o.converged_s for o in outcomes if o.converged_s is not None]
    if times:
        lines.append(
            f"| convergence after heal, p50 / p99 / max | {pct(times, 0.5):.2f} / "
            f"{pct(times, 0.99):.2f} / {max(times):.2f} s |"
        )
    # A NATS server's death costs a JetStream leader election (4-9 s, not configurable), which
    # the schedules without one do not pay: the two are reported apart (docs/reliability.md).
    for label, part in (
        ("with a NATS server down", [o for o in outcomes if _has(o, "nats")]),
        ("without", [o for o in outcomes if not _has(o, "nats")]),
    ):
        ts = [o.converged_s for o in part if o.converged_s is not None]
        late_part = sum(1 for o in part if o in late)
        if ts:
            lines.append(
                f"| schedules {label}: run, late, p50 / p99 / max | {len(part)}, {late_part}, "
                f"{pct(ts, 0.5):.2f} / {pct(ts, 0.99):.2f} / {max(ts):.2f} s |"
            )
    settled = [o.settled_s for o in outcomes]
    if settled:
        lines.append(
            "| wait for a redundant bus before a schedule (every stream led, every replica "
            f"current), p50 / max | {pct(settled, 0.5):.2f} / {max(settled):.2f} s |"
        )
    lines += ["", "## Convergence after the last heal, by fault kind", ""]
    lines += [
        "| fault kind | schedules | p50 | p99 | max | not converged (30 s) |",
        "|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        with_kind = [o for o in outcomes if any(f.kind == kind for f in o.faults)]
        ts = [o.converged_s for o in with_kind if o.converged_s is not None]
        never = sum(1 for o in with_kind if o.converged_s is None)
        if ts:
            lines.append(
                f"| {kind} | {len(with_kind)} | {statistics.median(ts):.2f} s | "
                f"{pct(ts, 0.99):.2f} s | {max(ts):.2f} s | {never} |"
            )
        elif with_kind:
            lines.append(f"| {kind} | {len(with_kind)} | - | - | - | {never} |")
    lines += ["", "## Failures (replay: `python -m bench.chaos --seed S --schedules 1`)", ""]
    lines += [NOTE, ""]
    bad = [o for o in outcomes if o.overlaps or o in late or o.error]
    if not bad:
        lines.append("None.")
    for o in bad:
        what = []
        if o.overlaps:
            first = o.overlaps[0]
            names = [macs.get(m, m) for m in first.macs]
            what.append(
                f"{len(o.overlaps)} overlapping rounds (first: {first.vip} by {names} at "
                f"+{first.t - o.t0:.2f}s)"
            )
        if o in late:
            took = "never (30 s)" if o.converged_s is None else f"in {o.converged_s:.1f} s"
            what.append(f"converged {took}" + (f", last wrong: {o.stuck}" if o.stuck else ""))
        if o.error:
            what.append(f"lab error: {o.error}")
        lines.append(f"- seed {o.seed}: {'; '.join(str(f) for f in o.faults)} -> {'; '.join(what)}")
    return "\n".join(lines) + "\n"


def keep_logs(lab: Lab, seed: int) -> None:
    """The services' logs of a schedule that never converged, before the lab is rebuilt."""
    kept = Path(f"/tmp/vigil-chaos/{lab.prefix}-seed{seed}")
    kept.mkdir(parents=True, exist_ok=True)
    for log in lab.dir.glob("*.log"):
        shutil.copy(log, kept / log.name)
    print(f"seed {seed}: logs kept in {kept}", flush=True)


@dataclass
class Run:
    """Every schedule's outcome, the MAC -> node map for the report, and the rebuilds."""

    outcomes: list[Outcome] = field(default_factory=list)
    macs: dict[str, str] = field(default_factory=dict)
    rebuilds: int = 0

    def failed(self, converge: float) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if o.overlaps or o.error or o.converged_s is None or o.converged_s > converge
        ]


def run_schedules(lab: Lab, seeds: Iterable[int], converge: float, run: Run) -> Run:
    """Run the schedules ``seeds`` on ``lab`` (brought up here, and down when done), adding
    each outcome to ``run`` as it comes."""
    spec = generated(NODES, groups=GROUPS)
    vips = [str(IPv4Interface(g.address).ip) for g in spec.groups]
    todo = iter(seeds)
    seed = next(todo, None)
    try:
        while seed is not None:
            # A fresh lab, and a new one after every schedule that did not converge: each
            # schedule starts from a healthy cluster, so one failure is not counted twice.
            lab.down()
            state = lab.up(spec)
            run.macs.update({mac(state.ns(n)): n for n in state.nodes})
            chaos = Chaos(lab, state, converge)
            checker = ArpChecker(state.ns("client"), vips)
            try:
                while seed is not None:
                    out = chaos.run(seed, checker)
                    run.outcomes.append(out)
                    seed = next(todo, None)
                    took = "never" if out.converged_s is None else f"{out.converged_s:.2f}s"
                    flag = " OVERLAP" if out.overlaps else ""
                    print(
                        f"seed {out.seed}: {'; '.join(map(str, out.faults))} -> converged "
                        f"{took}{flag}" + (f" (last wrong: {out.stuck})" if out.stuck else ""),
                        flush=True,
                    )
                    if out.converged_s is None or out.error:
                        keep_logs(lab, out.seed)
                        run.rebuilds += 1
                        break
                    if out.converged_s > converge:
                        keep_logs(lab, out.seed)  # late: what took the time
            finally:
                checker.stop()
                chaos.close()
    finally:
        lab.down()
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--schedules", type=int, default=200)
    parser.add_argument("--converge", type=float, default=5.0, help="seconds allowed after heal")
    parser.add_argument("--out", type=Path, default=Path("docs/reliability.md"))
    parser.add_argument("--prefix", default="vchaos")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the report and lab down still run
    run = Run()
    try:
        seeds = range(args.seed, args.seed + args.schedules)
        run_schedules(Lab(args.prefix), seeds, args.converge, run)
    finally:
        args.out.write_text(report(run.outcomes, args.seed, args.converge, run.macs))
    print(f"report: {args.out} (the lab was rebuilt {run.rebuilds} times)")
    return 1 if run.failed(args.converge) else 0


if __name__ == "__main__":
    raise SystemExit(main())
