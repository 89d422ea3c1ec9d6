"""Human durations (``200ms``, ``1.5s``, ``2m``) as used in the cluster file and on the CLI."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SECONDS = 366 * 24 * 3600.0  # a year: past that a duration is a typo, and inf is no time
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds from ``"200ms"``, ``"1s"``, ``2`` (bare numbers are seconds). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '200ms' or '1s', got {str(value)[:40]!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too big for a float
            seconds = math.inf
    elif isinstance(value, str) and (m := _PATTERN.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        shown = repr(value) if not isinstance(value, str) else repr(value[:40])
        raise ValueError(f"expected a duration like '200ms' or '1s', got {shown[:60]}")
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"duration must be finite and at most a year, got {str(value)[:40]!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {str(value)[:40]!r}")
    return seconds


def format_duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:g}s"
