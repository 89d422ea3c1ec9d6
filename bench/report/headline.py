"""The top of docs/benchmarks.md: the headline table against the targets, and why."""

from __future__ import annotations

import math

from ..failover import (
    NODE_HOPS,
    SWITCH_MARKS,
)
from ..stats import fmt_ms, ratio
from .common import (
    TARGETS,
    Results,
    Row,
    by_name,
    ka_by,
    ka_served,
    p50,
    served,
    table,
    verdict,
)


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
