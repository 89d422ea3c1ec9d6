"""Summaries of repeated measurements: min / p50 / p90 / max, in milliseconds for display."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    n: int
    min: float
    p50: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        vals = [v for v in values if v is not None and not math.isnan(v)]
        if not vals:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(len(vals), min(vals), percentile(vals, 50), percentile(vals, 90), max(vals))

    def ms(self, digits: int = 0) -> str:
        """``min / p50 / p90 / max`` in ms (values are seconds)."""
        if self.n == 0:
            return "n/a"
        return " / ".join(fmt_ms(v, digits) for v in (self.min, self.p50, self.p90, self.max))


def fmt_ms(seconds: float | None, digits: int = 0) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:.{digits}f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}"
