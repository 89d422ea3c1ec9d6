"""The console summary printed at the end of a run."""

from __future__ import annotations

from ..stats import Summary, fmt_ms
from .common import (
    Results,
    ka_served,
    served,
)


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
                    "failed",
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
