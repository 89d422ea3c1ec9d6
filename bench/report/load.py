"""Load: no false failover with a core saturated."""

from __future__ import annotations

from .common import (
    Results,
    Row,
    table,
)


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
