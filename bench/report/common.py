"""What every section shares: the results, the targets, table and number helpers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median

from ..failover import (
    FailoverResult,
)
from ..keepalived import KaResult
from ..load import LoadResult
from ..machine import Facts
from ..procstat import Usage
from ..scale import ScaleCase
from ..stats import Summary

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
