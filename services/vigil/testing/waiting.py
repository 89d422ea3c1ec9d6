"""Waiting for a condition with a deadline (never a bare sleep in a test)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """Something awaited did not happen before its deadline (the test fails)."""


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.02,
    since: float | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that. At the deadline
    (``timeout`` seconds from ``since``, a ``time.monotonic()`` value, default now) it raises
    ``WaitTimeout`` saying what we waited for."""
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what  # asked late: it can tell the last thing seen
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {said}")
        time.sleep(interval)
