"""Rendering the results: a console table and docs/benchmarks.md."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median

from .failover import (
    CRASH_HOPS,
    NODE_HOPS,
    SWITCH_MARKS,
    FailoverResult,
)
from .keepalived import KaResult
from .load import LoadResult
from .machine import Facts
from .procstat import Usage
from .scale import ScaleCase
from .stats import Summary, fmt_ms, ratio

Row = Sequence[object]

TARGETS = {
    "default": 1.0,  # node loss -> served p50, seconds
    "tuned": 0.3,
    "switchover": 0.1,
    "scale": 1.0,  # 1,000 groups re-placed within 1 s of detection
}


@dataclass
class Results:
    argv: str
    quick: bool
    started: str
    facts: Facts
    duration_s: float = 0.0
    installed: list[str] = field(default_factory=list)
    failover: list[FailoverResult] = field(default_factory=list)
    keepalived: list[KaResult] = field(default_factory=list)
    scale: list[ScaleCase] = field(default_factory=list)
    scale_commands: list[str] = field(default_factory=list)
    load: list[LoadResult] = field(default_factory=list)
    probe_command: str = ""
    errors: list[str] = field(default_factory=list)
    section_s: dict[str, float] = field(default_factory=dict)
    fence: Summary | None = None  # one fence renewal (nft subprocess), seconds


# -- small helpers ----------------------------------------------------------------------------
def table(head: Sequence[str], rows: Iterable[Row]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def mean(values: Iterable[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def address_up(fr: FailoverResult) -> list[float]:
    """Kill -> address_acquired on the survivor, per node-loss run."""
    hops = ("detection", "decision", "address")
    return [sum(r.hops[h] for h in hops) for r in fr.node_loss if all(h in r.hops for h in hops)]


def p50(values: Iterable[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return median(vals) if vals else math.nan


def served(fr: FailoverResult) -> Summary:
    return Summary.of([r.served_s for r in fr.node_loss if r.served_s is not None])


def ka_served(kr: KaResult) -> Summary:
    return Summary.of([r.served_s for r in kr.runs if r.served_s is not None])


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return "not measured"
    if value <= target:
        return f"met ({value * 1000:.0f} <= {target * 1000:.0f} ms)"
    return f"MISSED by {(value - target) * 1000:.0f} ms ({value / target:.2f}x)"


def by_name(results: list[FailoverResult], name: str) -> FailoverResult | None:
    return next((r for r in results if r.timing_name == name), None)


def ka_by(results: list[KaResult], key: str) -> KaResult | None:
    return next((r for r in results if r.cfg.key == key), None)


def usage_cell(u: Usage | None) -> str:
    return f"{u.cpu_pct:.1f} % / {u.rss_mib:.0f} MiB" if u else "n/a"


# -- console -----------------------------------------------------------------------------------
def console(res: Results) -> str:
    lines = ["", "== Vigil benchmarks " + ("(QUICK MODE) " if res.quick else "") + "=="]
    rows: list[tuple[str, str, str]] = []
    for fr in res.failover:
        rows.append(
            (f"Vigil node loss -> served ({fr.timing_name})", served(fr).ms(), str(served(fr).n))
        )
        crash = Summary.of([r.served_s for r in fr.app_crash if r.served_s is not None])
        rows.append((f"Vigil app crash -> served ({fr.timing_name})", crash.ms(), str(crash.n)))
        sw = [r for r in fr.switchover if r.gap_s is not None]
        if sw:
            gap = Summary.of([r.gap_s for r in sw if r.gap_s is not None])
            rows.append((f"Vigil switchover gap ({fr.timing_name})", gap.ms(), str(gap.n)))
        elif fr.switchover:
            rows.append(
                (
                    f"Vigil switchover ({fr.timing_name})",
                    "not implemented" if fr.switchover[0].missing else "failed",
                    "0",
                )
            )
    for kr in res.keepalived:
        s = ka_served(kr)
        rows.append((f"{kr.cfg.label}: node loss -> served", s.ms(), str(s.n)))
    w = max((len(r[0]) for r in rows), default=10)
    lines.append(f"{'case':<{w}}  {'min / p50 / p90 / max (ms)':<28}  n")
    lines += [f"{a:<{w}}  {b:<28}  {c}" for a, b, c in rows]
    for case in res.scale:
        for run in case.runs[:1]:
            lines.append(
                f"scale {case.nodes} nodes / {case.groups} groups {case.layout}: "
                f"{run.affected} groups acknowledged {fmt_ms(run.all_acked_s)} ms after node_lost"
            )
        if case.error:
            lines.append(f"scale {case.nodes} nodes / {case.groups} groups: ERROR {case.error}")
    for lr in res.load:
        lines.append(
            f"load {lr.timing_name} {lr.duration_s / 60:g} min: "
            f"{lr.node_lost} spurious node_lost, "
            f"{sum(lr.failed.values())} failed client attempts of {lr.attempts}"
        )
    lines += [f"ERROR: {e}" for e in res.errors]
    lines.append(f"total {res.duration_s / 60:.1f} min")
    return "\n".join(lines)


# -- markdown -----------------------------------------------------------------------------------
def markdown(res: Results) -> str:
    out: list[str] = ["# Vigil benchmarks", ""]
    if res.quick:
        out += [
            "> **QUICK MODE** (a smoke run: few runs, short load test, no 10,000-group cases).",
            "> The numbers below are not the published ones; run `make bench` for those.",
            "",
        ]
    out += [
        f"Generated by `{res.argv}` on {res.started}, in {res.duration_s / 60:.1f} minutes"
        + (
            " (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in res.section_s.items()) + ")"
            if res.section_s
            else ""
        )
        + ". "
        "Every number below was measured in that one run, on the machine described next; "
        "times are wall-clock milliseconds unless stated. `make bench` reproduces it "
        "(it runs `make setup`, then `python -m bench`, which installs keepalived with apt-get "
        "if missing).",
        "",
    ]
    out += headline(res)
    out += ["## The machine", "", *table(["", ""], res.facts.rows()), ""]
    if res.installed:
        out += [f"Installed by this run: {', '.join(res.installed)}.", ""]
    out += [
        "The machine is shared: other engineers' labs and tests ran during the run (see the "
        "load average and namespace count above), so the spread of the numbers includes their "
        "noise. Nothing was pinned except the busy loop of section 4.",
        "",
    ]
    out += section_failover(res)
    out += section_keepalived(res)
    out += section_scale(res)
    out += section_load(res)
    out += section_commands(res)
    out += appendix(res)
    return "\n".join(out) + "\n"


def headline(res: Results) -> list[str]:
    out = ["## Headline", ""]
    rows: list[Row] = []
    d, t = by_name(res.failover, "default"), by_name(res.failover, "tuned")
    k2, k3 = ka_by(res.keepalived, "v2"), ka_by(res.keepalived, "v3")
    if d:
        v = served(d).p50
        rows.append(
            (
                "node loss -> served, default timing (p50)",
                fmt_ms(v),
                "<= 1000",
                verdict(v, TARGETS["default"]),
            )
        )
    if t:
        v = served(t).p50
        rows.append(
            (
                "node loss -> served, tuned timing (p50)",
                fmt_ms(v),
                "<= 300",
                verdict(v, TARGETS["tuned"]),
            )
        )
    for fr in (d, t):
        if fr is None:
            continue
        gaps = [r.gap_s for r in fr.switchover if r.gap_s is not None]
        if gaps:
            v = p50(gaps)
            rows.append(
                (
                    f"planned switchover, client gap ({fr.timing_name}, p50)",
                    fmt_ms(v),
                    "<= 100",
                    verdict(v, TARGETS["switchover"]),
                )
            )
        elif fr.switchover and fr.switchover[0].missing:
            rows.append(
                (
                    "planned switchover, client gap",
                    "-",
                    "<= 100",
                    "not implemented yet (issue 4): not measured",
                )
            )
    conc = [c for c in res.scale if c.layout == "concentrated" and c.groups == 1000 and c.runs]
    if conc:
        v = p50(r.all_decided_s for c in conc for r in c.runs)
        a = p50(r.all_acked_s for c in conc for r in c.runs)
        rows.append(
            (
                "1,000 groups of a lost node re-placed after detection (p50)",
                fmt_ms(v),
                "<= 1000",
                verdict(v, TARGETS["scale"]) + f"; all acknowledged at {fmt_ms(a)}",
            )
        )
    for lr in res.load:
        rows.append(
            (
                f"spurious node_lost, {lr.duration_s / 60:g} min one core saturated "
                f"({lr.timing_name})",
                str(lr.node_lost),
                "0" if lr.timing_name == "default" else "(none set)",
                ("met" if lr.node_lost == 0 else "MISSED")
                if lr.timing_name == "default"
                else "for information",
            )
        )
    out += [*table(["what", "measured (ms)", "target", "verdict"], rows), ""]
    out += why(res)
    ratios: list[tuple[str, str, str, str]] = []
    for fr, kr in ((d, k2), (t, k3), (d, k3)):
        if fr and kr:
            ratios.append(
                (
                    f"Vigil {fr.timing_name} / {kr.cfg.label}",
                    fmt_ms(served(fr).p50),
                    fmt_ms(ka_served(kr).p50),
                    ratio(served(fr).p50, ka_served(kr).p50),
                )
            )
    if ratios:
        out += [
            "Node loss, first answer from the survivor, p50, same lab topology, kill and client:",
            "",
        ]
        out += table(["comparison", "Vigil", "keepalived", "ratio Vigil / keepalived"], ratios)
        out += [""]
    return out


def why(res: Results) -> list[str]:
    """One line per target: where the measured time went (p50s of the hops)."""
    lines: list[str] = []
    for fr in res.failover:
        h = {hop: p50(r.hops.get(hop) for r in fr.node_loss) for hop in NODE_HOPS}
        if any(math.isnan(v) for v in h.values()):
            continue
        lease = fr.timing.lease * 1000
        lines.append(
            f"- node loss, {fr.timing_name}: detection {fmt_ms(h['detection'])} (the "
            f"{lease:.0f} ms lease, minus the time since the last heartbeat) + decision "
            f"{fmt_ms(h['decision'])} + address {fmt_ms(h['address'])} + app spawn "
            f"{fmt_ms(h['app'])} + the demo app's own start until it answers "
            f"{fmt_ms(h['first served'])} (p50 of each hop)."
        )
    for fr in res.failover:
        runs = [r for r in fr.switchover if r.marks]
        if not runs:
            continue
        m = {k: p50(r.marks.get(k) for r in runs) for k in SWITCH_MARKS}
        steps = ", ".join(f"{k} {fmt_ms(v)}" for k, v in sorted(m.items(), key=lambda kv: kv[1]))
        lines.append(
            f"- switchover, {fr.timing_name}, ms after the intent (p50): {steps}; the gap is "
            "mostly the address move and the new app's cold start."
        )
    for c in res.scale:
        if c.layout != "concentrated" or not c.runs or any(r.error for r in c.runs):
            continue
        per = p50(r.all_decided_s / r.affected for r in c.runs if r.affected)
        lines.append(
            f"- {c.groups:,} groups re-placed ({c.nodes} nodes): {per * 1000:.2f} ms per group "
            "in placement (decide over every group, then a compare-and-set KV write, the "
            "placement_decided and a service_down per group)."
        )
    return ["Where the time went:", "", *lines, ""] if lines else []


def section_failover(res: Results) -> list[str]:
    if not res.failover:
        return []
    out = [
        "## 1. Failover in the lab",
        "",
        "A `vigil lab` with two nodes and one group (`web1`: the lab's demo app, an HTTP server "
        "printing the node and its pid; preferred n1, possible n2). The client in the client "
        "namespace is the lab's probe (`vigil.lab.probe`: TCP connect + HTTP GET every 10 ms, "
        "50 ms timeout), started before each run. Times are from the fault to the *start* of the "
        "first successful attempt; while the old node's address is dead, an attempt costs its "
        "full 50 ms timeout, so a time is quantised to about 10-50 ms.",
        "",
        "- **node loss**: SIGKILL every process in the node's namespace, then its link down "
        "(`bench/netfault.py`, the same procedure as `Lab.kill`; the clock starts at the first "
        "SIGKILL), 0.3 s plus a random delay of up to one heartbeat after the client's first "
        "answer, so the kill falls at any phase of the heartbeat. Then the victim is revived, "
        "rejoins, and `vigil enable web1` re-enables "
        "switching (a failover onto the last node of a two-node list disables it, Serviceguard's "
        "rule); the next run kills the other node. One lab per timing set, never rebuilt.",
        "- **app crash**: SIGKILL of the app's process; the supervisor restarts it on the same "
        "node after its back-off. Crashes are spaced beyond the group's restart window (set to "
        "2 s for the bench) so each one is a *first* failure.",
        "- **planned switchover**: `vigil switchover web1 --to <other node>`; the gap is from the "
        "last answer of the old node to the first of the new one (a perfect switchover shows the "
        "probe's 10 ms interval).",
        "",
    ]
    rows: list[Row] = []
    for fr in res.failover:
        tm = f"{fr.timing_name} ({fr.timing.heartbeat * 1000:.0f} / {fr.timing.lease * 1000:.0f})"
        s = served(fr)
        outage = Summary.of([r.outage_s for r in fr.node_loss if r.outage_s is not None])
        rows.append(("node loss -> first answer from the survivor", tm, s.n, s.ms()))
        rows.append(
            (
                "node loss: client outage (last answer before -> first after)",
                tm,
                outage.n,
                outage.ms(),
            )
        )
        c = Summary.of([r.served_s for r in fr.app_crash if r.served_s is not None])
        rows.append(("app crash -> served again", tm, c.n, c.ms()))
        sw = [r for r in fr.switchover if r.gap_s is not None]
        if sw:
            g = Summary.of([r.gap_s for r in sw if r.gap_s is not None])
            tot = Summary.of([r.total_s for r in sw if r.total_s is not None])
            rows.append(("planned switchover: client gap", tm, g.n, g.ms()))
            rows.append(
                ("planned switchover: command -> served on the new node", tm, tot.n, tot.ms())
            )
        elif fr.switchover:
            why = (
                "not implemented yet (issue 4)"
                if fr.switchover[0].missing
                else (f"failed: {fr.switchover[0].error}")
            )
            rows.append(("planned switchover", tm, 0, why))
    out += [
        *table(
            ["case", "timing (heartbeat / lease, ms)", "runs", "min / p50 / p90 / max (ms)"], rows
        ),
        "",
    ]
    errors = [
        e
        for fr in res.failover
        for e in (
            *(r.error for r in fr.node_loss),
            *(r.error for r in fr.app_crash),
            *(r.error for r in fr.switchover),
        )
        if e
    ]
    if errors:
        out += ["Runs with problems: " + "; ".join(errors), ""]

    out += [
        "### Where the time of a node loss goes",
        "",
        "From the events' own `ts` stamps (all processes share this machine's clock): "
        "detection = node_lost - kill; decision = placement_decided - node_lost; address = "
        "address_acquired - placement_decided; app = app_started - address_acquired; first "
        "served = client's first answer - app_started.",
        "",
    ]
    rows = []
    for fr in res.failover:
        for hop in NODE_HOPS:
            vals = [r.hops[hop] for r in fr.node_loss if hop in r.hops]
            s = Summary.of(vals)
            rows.append((fr.timing_name, hop, s.ms(), _share(hop, fr)))
        silent = Summary.of([r.silent_for for r in fr.node_loss if r.silent_for is not None])
        rows.append((fr.timing_name, "(membership's silent_for at node_lost)", silent.ms(), ""))
    out += table(["timing", "hop", "min / p50 / p90 / max (ms)", "share of the p50 total"], rows)
    out += [
        "",
        "Detection is the lease by design (the node is declared lost once it has been "
        "silent for longer than the lease, checked every heartbeat/4; it was last heard "
        "0..1 heartbeat before the kill). The app hop's 'first served' is the demo app's "
        "own start (a Python interpreter importing http.server and binding): the client is "
        "refused at once meanwhile, because the address is already up.",
        "",
    ]
    if res.fence:
        out += [
            f"One fence renewal (`Fence.renew`, timed by `bench/micro.py` in a scratch namespace) "
            f"takes {res.fence.ms(1)} ms (min / p50 / p90 / max, 50 renewals) on this machine; "
            "the address service does one before it adds the address (inside the address hop), "
            "and one per heartbeat.",
            "",
        ]

    if any(fr.app_crash for fr in res.failover):
        out += ["### App crash", ""]
        rows = []
        for fr in res.failover:
            for hop in CRASH_HOPS:
                s = Summary.of([r.hops[hop] for r in fr.app_crash if hop in r.hops])
                rows.append((fr.timing_name, hop, s.ms()))
            moved = sum(1 for r in fr.app_crash if r.served_s is not None and not r.same_node)
            rows.append((fr.timing_name, "runs served from another node", str(moved)))
        out += table(["timing", "hop", "min / p50 / p90 / max (ms)"], rows)
        out += [
            "",
            "exit seen = app_failed - SIGKILL; restart = app_started - app_failed (the "
            "supervisor's back-off); first served = first answer - app_started. Restart "
            f"policy of the group: `{res.failover[0].restart_policy}`.",
            "",
        ]

    sws = [(fr, [r for r in fr.switchover if r.marks]) for fr in res.failover]
    if any(runs for _, runs in sws):
        out += [
            "### Planned switchover, event by event",
            "",
            "Milliseconds after the operator's intent was stored (`intent_changed`), p50 "
            "(min..max):",
            "",
        ]
        rows = []
        for fr, runs in sws:
            for mark in (*SWITCH_MARKS, "intent (after the command started)"):
                vals = [r.marks[mark] for r in runs if mark in r.marks]
                s = Summary.of(vals)
                rows.append(
                    (fr.timing_name, mark, f"{fmt_ms(s.p50)} ({fmt_ms(s.min)}..{fmt_ms(s.max)})")
                )
        out += table(["timing", "event", "ms after the intent"], rows)
        out += [
            "",
            "`intent_changed` is stamped by the command after it stored the intent, and "
            "the services react to the stored intent, so an event can come a few ms before "
            "it (a negative time).",
            "",
            "The new node takes the address only once the old one has released it (and its "
            "app has stopped), then starts the app cold: the client gap is the address move "
            "plus the new app's own start.",
            "",
        ]

    out += [
        "### The real node agents at idle",
        "",
        "CPU (percent of one core) and RSS of each Vigil process of the lab over an idle "
        "window, per timing set (a node = its address service + its supervisor):",
        "",
    ]
    roles = sorted({r for fr in res.failover for r in fr.idle})
    rows = [(role, *(usage_cell(fr.idle.get(role)) for fr in res.failover)) for role in roles]
    out += table(["process", *(f"{fr.timing_name}: CPU / RSS" for fr in res.failover)], rows)
    out += [""]
    return out


def _share(hop: str, fr: FailoverResult) -> str:
    total = p50(r.served_s for r in fr.node_loss)
    v = p50(r.hops.get(hop) for r in fr.node_loss)
    if math.isnan(total) or math.isnan(v) or total == 0:
        return ""
    return f"{100 * v / total:.0f} %"


def section_keepalived(res: Results) -> list[str]:
    if not res.keepalived:
        return []
    out = [
        "## 2. keepalived side by side",
        "",
        "Same run, same topology (the lab's own network code: bridge namespace, two node "
        "namespaces with eth0 on the bridge, a client namespace, same addresses and ARP "
        "sysctls), same client probe, same kill (`bench/netfault.py`: SIGKILL of keepalived's "
        "whole process group and of everything else in the node's namespace, then link down). "
        "Each node runs keepalived (`--vrrp`, both `state BACKUP`, priority 100, `nopreempt`, "
        "so a revived node stays backup and each run kills the current master) and the lab's "
        "demo app bound to 0.0.0.0. Before a victim's link comes back up, the VIP its kernel "
        "kept is deleted (otherwise two nodes would hold it). Fresh pid file names per start. "
        "The kill comes 0.3 s plus a random delay of up to one advert_int after the client's "
        "first answer: the revival and the settling are otherwise in step with the master's "
        "adverts, which would pin every run to the same phase.",
        "",
    ]
    rows: list[Row] = []
    for kr in res.keepalived:
        s = ka_served(kr)
        m = Summary.of([r.master_s for r in kr.runs if r.master_s is not None])
        rows.append((kr.cfg.label, s.n, s.ms(), m.ms()))
    out += [
        *table(
            [
                "config",
                "runs",
                "node loss -> served: min / p50 / p90 / max (ms)",
                "survivor logs MASTER: min / p50 / p90 / max (ms)",
            ],
            rows,
        ),
        "",
    ]
    rows2: list[Row] = []
    for fr in res.failover:
        for kr in res.keepalived:
            a, b = served(fr), ka_served(kr)
            up_v = mean(address_up(fr))
            up_k = mean(r.master_s for r in kr.runs)
            rows2.append(
                (
                    f"Vigil {fr.timing_name}",
                    kr.cfg.label,
                    ratio(a.p50, b.p50),
                    ratio(a.p90, b.p90),
                    ratio(
                        mean(r.served_s for r in fr.node_loss), mean(r.served_s for r in kr.runs)
                    ),
                    f"{ratio(up_v, up_k)} ({fmt_ms(up_v)} / {fmt_ms(up_k)})",
                )
            )
    out += ["Ratio Vigil / keepalived (below 1 means Vigil is faster):", ""]
    out += [
        *table(
            [
                "Vigil",
                "keepalived",
                "served: p50 ratio",
                "p90 ratio",
                "mean ratio",
                "survivor holds the address: mean ratio (ms / ms)",
            ],
            rows2,
        ),
        "",
        "The client's times are quantised by its 50 ms timeout (section 1), so a p50 can jump "
        "by one step between runs; the means are steadier. The last column compares the "
        "moment the survivor took the address (Vigil: address_acquired; keepalived: the "
        "MASTER log line), which no probe quantises; Vigil still starts the app after it.",
        "",
    ]
    out += [
        "VRRP's arithmetic: the backup takes over after 3 x advert_int + skew, skew = "
        "(256 - priority) / 256 (x advert_int in v3), minus however long ago the last advert "
        "was sent; the client is served a few ms after MASTER since the app already runs on "
        "the backup. Vigil restarts the app on the survivor (cold), which keepalived does "
        "not do: that is most of the difference once detection is comparable.",
        "",
    ]
    kr0 = res.keepalived[0]
    out += [
        "keepalived configuration (node n1; n2 differs only in router_id; the v3 run adds "
        "`vrrp_version 3` and `advert_int 0.1`):",
        "",
        "```",
        kr0.config_text.rstrip(),
        "```",
        "",
    ]
    return out


def section_scale(res: Results) -> list[str]:
    if not res.scale:
        return []
    out = [
        "## 3. Control-plane scale",
        "",
        "No namespaces: one nats-server, the real membership and placement services as "
        "processes, and simulated node agents (`bench/simagent.py`: a process per 50 nodes, "
        "each node an asyncio task that heartbeats every 200 ms like the address service and "
        "acknowledges a placement for its node like the address service and the supervisor "
        "do: `AddressAcquired` + `AddressStatus(held)` in the observed bucket, `AppStarted` + "
        "`ServiceUp` + `AppStatus(running)`). Default timing (200 / 800 ms). `spread`: group i "
        "prefers node i mod N; `concentrated`: every group prefers n1 and fails over to the "
        "others round-robin (the target's case: 1,000 groups on the lost node). A failover = "
        "one node stops heartbeating and acknowledging.",
        "",
    ]
    rows: list[Row] = []
    for c in res.scale:
        if c.error and not c.runs:
            rows.append((c.nodes, c.groups, c.layout, "-", "ERROR", c.error, "", "", "", ""))
            continue
        runs = c.runs
        msgs = p50(sum(r.events.values()) for r in runs)
        unfinished = [r for r in runs if r.error]
        if unfinished:
            r = unfinished[0]
            decided = f"unfinished: {r.replaced} of {r.affected} after {r.window_s:.0f} s"
            acked = f"unfinished: {r.acknowledged} of {r.affected}"
        else:
            decided = fmt_ms(p50(r.all_decided_s for r in runs))
            acked = fmt_ms(p50(r.all_acked_s for r in runs))
        rows.append((
            c.nodes, c.groups, c.layout, f"{p50(r.affected for r in runs):.0f}", len(runs),
            fmt_ms(p50(r.detection_s for r in runs)),
            fmt_ms(p50(r.first_decided_s for r in runs)),
            decided,
            acked,
            f"{msgs:.0f}",
        ))  # fmt: skip
    out += table(
        [
            "nodes",
            "groups",
            "layout",
            "groups on the lost node",
            "runs",
            "detection (ms)",
            "first re-placed (ms after node_lost)",
            "all re-placed (ms)",
            "all acknowledged (ms)",
            "events on vigil.> per failover",
        ],
        rows,
    )
    out += [
        "",
        "Values are p50 over the runs (different victims, each holding its initial "
        "share of groups; concentrated: a fresh control plane per run).",
        "",
    ]
    rows = []
    for c in res.scale:
        for r in c.runs[:1]:
            per = r.affected or 1
            ctl = r.server_in - r.heartbeats
            rows.append(
                (
                    f"{c.nodes} / {c.groups} {c.layout}",
                    r.affected,
                    ", ".join(f"{k} {v}" for k, v in sorted(r.events.items())),
                    f"{ctl} ({ctl / per:.1f} per group)",
                    f"{r.server_out} ({r.server_out / per:.1f} per group)",
                    f"{r.placement_in} / {r.placement_out}",
                )
            )
    out += [
        "NATS messages of one failover, counted by the server (`/varz`, `/connz`) over the "
        "window from the silence to 0.5 s after the last acknowledgement; heartbeats "
        "(estimated from the window) are subtracted from both counts, and the bench's own "
        "observer subscription from what the server delivered. For a failover that moves one "
        "or ten groups the error of the heartbeat estimate is larger than the count itself:",
        "",
    ]
    out += table(
        [
            "nodes / groups",
            "groups moved",
            "events on vigil.>",
            "published by clients",
            "delivered by the server",
            "placement in / out",
        ],
        rows,
    )
    fanout = [c for c in res.scale if c.runs]
    if fanout:
        c = max(fanout, key=lambda c: c.nodes * max(r.affected for r in c.runs))
        k = max(r.affected for r in c.runs)
        out += [
            "",
            f"Not reproduced by the simulation: in a real cluster every node's address "
            f"service and supervisor each subscribe to every placement decision and each "
            f"watch the whole placement bucket, so a decision is delivered about "
            f"4 x nodes times: for {c.nodes} nodes and {k} groups moved that is about "
            f"{4 * c.nodes * k:,} deliveries, most of them to nodes the decision is not "
            f"about.",
            "",
        ]
    out += [
        "### Resources at idle",
        "",
        "CPU (percent of one core) / RSS over an idle window after every group is placed "
        "and acknowledged. `agents` are the simulator's processes (not Vigil).",
        "",
    ]
    rows = []
    for c in res.scale:
        agents = [u for role, u in c.idle.items() if role.startswith("agents-")]
        ag = (
            f"{sum(u.cpu_pct for u in agents):.1f} % / {sum(u.rss_mib for u in agents):.0f} MiB"
            if agents
            else "n/a"
        )
        rows.append(
            (
                f"{c.nodes} / {c.groups} {c.layout}",
                usage_cell(c.idle.get("membership")),
                usage_cell(c.idle.get("placement")),
                usage_cell(c.idle.get("nats-server")),
                ag,
                f"{c.config_bytes / 1e6:.2f} MB"
                + (f" (max_payload {c.max_payload})" if "default" not in c.max_payload else ""),
            )
        )
    out += [
        *table(
            [
                "nodes / groups",
                "membership",
                "placement",
                "nats-server",
                "simulated agents",
                "cluster file",
            ],
            rows,
        ),
        "",
    ]
    out += growth(res.scale)
    polled = [c for c in res.scale if c.idle_poll]
    if polled:
        out += [
            "### The cluster file, re-read every second by every node",
            "",
            "Every node's address service and supervisor re-read the whole cluster file "
            "from the config bucket every second (`ConfigSource.refresh` in their resync "
            "tick; membership every 3 s, placement every 1 s), then compare revisions. "
            "With the simulated agents doing the same (2 reads per node per second):",
            "",
        ]
        rows = []
        for c in polled:
            want = 2 * c.nodes
            rows.append(
                (
                    f"{c.nodes} / {c.groups} {c.layout}",
                    f"{c.config_bytes / 1e6:.2f} MB",
                    f"{c.poll_rate:.0f} of {want}",
                    f"{c.poll_bytes_s / 1e6:.0f} MB/s",
                    usage_cell(c.idle_poll.get("nats-server")),
                    usage_cell(c.idle.get("nats-server")),
                )
            )
        out += [
            *table(
                [
                    "nodes / groups",
                    "cluster file",
                    "reads/s achieved",
                    "server out",
                    "nats-server while polling",
                    "nats-server without",
                ],
                rows,
            ),
            "",
        ]
    notes = [n for c in res.scale for n in c.notes] + [
        f"{c.nodes} / {c.groups} {c.layout}: {c.error}" for c in res.scale if c.error
    ]
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return out


def growth(cases: list[ScaleCase]) -> list[str]:
    def find(n: int, g: int, lay: str = "spread") -> ScaleCase | None:
        return next(
            (c for c in cases if c.nodes == n and c.groups == g and c.layout == lay and c.idle),
            None,
        )

    out: list[str] = []
    a, b = find(10, 1000), find(100, 1000)
    if a and b:
        out += ["**10 -> 100 nodes** (1,000 groups, spread):", ""]
        rows: list[Row] = []
        for role in ("membership", "placement", "nats-server"):
            ua, ub = a.idle.get(role), b.idle.get(role)
            if ua and ub:
                rows.append(
                    (
                        role,
                        f"{ua.cpu_pct:.1f} -> {ub.cpu_pct:.1f} %",
                        f"{(ub.cpu_pct - ua.cpu_pct) / 90 * 1000:.1f} m% per node",
                        f"{ua.rss_mib:.0f} -> {ub.rss_mib:.0f} MiB",
                        f"{(ub.rss_mib - ua.rss_mib) / 90 * 1024:.0f} KiB per node",
                    )
                )
        out += table(["process", "CPU at idle", "per added node", "RSS", "per added node"], rows)
        out += [""]
    g = [c for c in (find(100, 100), find(100, 1000), find(100, 10000)) if c]
    if len(g) >= 2:
        out += ["**100 -> 10,000 groups** (100 nodes, spread):", ""]
        rows = []
        for c in g:
            rows.append(
                (
                    c.groups,
                    usage_cell(c.idle.get("membership")),
                    usage_cell(c.idle.get("placement")),
                    usage_cell(c.idle.get("nats-server")),
                    f"{c.startup_s:.1f} s",
                    fmt_ms(p50(r.all_decided_s for r in c.runs)),
                )
            )
        out += table(
            [
                "groups",
                "membership",
                "placement",
                "nats-server",
                "initial placement, all acknowledged",
                "failover: all re-placed (ms)",
            ],
            rows,
        )
        out += [""]
    return out


def section_load(res: Results) -> list[str]:
    if not res.load:
        return []
    out = [
        "## 4. No false failover under load",
        "",
        "A lab of three nodes (one group each) for the whole duration, while a busy loop "
        "pinned to the last CPU saturates that core; the client probes `web1` all along.",
        "",
    ]
    rows: list[Row] = []
    for lr in res.load:
        gaps = ", ".join(f"{n} {v * 1000:.0f}" for n, v in lr.max_gap_s.items())
        other = {k: v for k, v in lr.events.items() if k != "NodeLost"}
        rows.append(
            (
                lr.timing_name,
                f"{lr.duration_s / 60:.1f} min",
                f"CPU {lr.busy_cpu}: {lr.busy_pct:.0f} % of a core",
                lr.node_lost,
                ", ".join(f"{k} {v}" for k, v in sorted(other.items())) or "none",
                f"{sum(lr.failed.values())} of {lr.attempts}",
                gaps,
                lr.load_end,
            )
        )
    out += [
        *table(
            [
                "timing",
                "duration",
                "busy loop got",
                "spurious node_lost",
                "other events (any is a spurious change)",
                "failed client attempts",
                "largest heartbeat gap seen (ms)",
                "load avg at the end",
            ],
            rows,
        ),
        "",
    ]
    return out


def section_commands(res: Results) -> list[str]:
    out = [
        "## The exact commands",
        "",
        "```",
        f"{res.argv}",
        "```",
        "",
        "Inside it (paths are this run's):",
        "",
        "```",
    ]
    if res.probe_command:
        out.append(f"# the client, in the client namespace\n{res.probe_command}")
    for kr in res.keepalived[:2]:
        out.append(f"# keepalived ({kr.cfg.key}) and the app, per node")
        out += kr.commands
    if res.scale_commands:
        out.append(
            "# control-plane scale: server (with a monitoring port), services, simulated agents"
        )
        out += res.scale_commands
    for lr in res.load[:1]:
        out.append(f"# section 4's busy loop\n{lr.busy_command}")
    out += ["```", ""]
    return out


def appendix(res: Results) -> list[str]:
    out = ["## Appendix: every run (ms)", ""]
    for fr in res.failover:
        out.append(
            f"- Vigil {fr.timing_name}, node loss -> served: "
            + ", ".join(fmt_ms(r.served_s) for r in fr.node_loss)
        )
        out.append(
            f"- Vigil {fr.timing_name}, app crash -> served: "
            + ", ".join(fmt_ms(r.served_s) for r in fr.app_crash)
        )
        if any(r.gap_s is not None for r in fr.switchover):
            out.append(
                f"- Vigil {fr.timing_name}, switchover gap: "
                + ", ".join(fmt_ms(r.gap_s) for r in fr.switchover)
            )
    for kr in res.keepalived:
        out.append(
            f"- {kr.cfg.label}, node loss -> served: "
            + ", ".join(fmt_ms(r.served_s) for r in kr.runs)
        )
    for c in res.scale:
        out.append(
            f"- scale {c.nodes} / {c.groups} {c.layout}, all acknowledged after node_lost: "
            + ", ".join(fmt_ms(r.all_acked_s) for r in c.runs)
        )
    return [*out, ""]
