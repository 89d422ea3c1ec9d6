"""Helpers for the e2e story tests that are not about driving a lab (that is
``vigil.testing.lab.LabDriver``, shared by every e2e test and the benchmarks' harness).

``behaviour_lab`` builds test_behaviours' labs on the driver; ``report`` records a measured
number; the rest is re-exported from ``vigil.testing`` for the test modules.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from vigil.testing.events import Seen
from vigil.testing.lab import LabDriver, driven_lab
from vigil.testing.netns import in_netns
from vigil.testing.procs import alive
from vigil.testing.waiting import wait_until
from vigil.wire.cluster import ClusterSpec

__all__ = ["alive", "behaviour_lab", "in_netns", "report", "ts", "wait_until"]


def ts(seen: Seen) -> datetime:
    return seen.event.ts


def report(name: str, text: str) -> None:
    """A measured number, in the test output (``pytest -s`` or ``-rA`` shows it) and in the
    file ``/tmp/vigil-behaviours-measures.txt``, appended, for the docs."""
    line = f"[measured] {name}: {text}"
    print(line)
    with contextlib.suppress(OSError), open("/tmp/vigil-behaviours-measures.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


@contextlib.contextmanager
def behaviour_lab(
    request: pytest.FixtureRequest, spec_for: Callable[[Path], ClusterSpec]
) -> Iterator[LabDriver]:
    """A lab of our own (prefix ``vbeh<random>``) built from ``spec_for(tmp)``, its events
    recorded; torn down and checked by ``driven_lab`` (logs kept when a step failed)."""
    with driven_lab("vbeh", failed=lambda: getattr(request.node, "_failed_step", None)) as beh:
        beh.up(spec_for(beh.tmp))
        beh.record_events("e2e-behaviours")
        yield beh
