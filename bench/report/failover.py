"""Failover: node loss, app crash and switchover, hop by hop."""

from __future__ import annotations

import math

from ..failover import (
    CRASH_HOPS,
    NODE_HOPS,
    SWITCH_MARKS,
    FailoverResult,
)
from ..stats import Summary, fmt_ms
from .common import (
    Results,
    Row,
    p50,
    served,
    table,
    usage_cell,
)


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
            rows.append(("planned switchover", tm, 0, f"failed: {fr.switchover[0].error}"))
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
