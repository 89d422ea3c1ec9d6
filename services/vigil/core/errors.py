"""Errors a reconcile raises, and what the work queue does with each (kopf's shape)::

    ReconcileError
    ├── Conflict    lost a compare-and-set: re-read and retry at once, no warning
    ├── Transient   the bus or a peer is unavailable: retry this key alone, with backoff
    └── Permanent   retrying cannot help (bad input, a bug): log once, wait for a change

Anything else a reconcile raises is treated as transient (and logged with its traceback once).
``classify`` maps the NATS client's exceptions onto this tree.
"""

from __future__ import annotations

import nats.errors
from nats.js.errors import KeyWrongLastSequenceError, ServiceUnavailableError


class ReconcileError(Exception):
    """Base of the errors a reconcile may raise on purpose."""


class Conflict(ReconcileError):
    """Another writer changed the record first; our copy is stale."""


class Transient(ReconcileError):
    """Worth retrying later; ``delay`` (seconds) overrides the queue's backoff when set."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(ReconcileError):
    """Retrying the same input fails the same way."""


def classify(exc: BaseException) -> ReconcileError | None:
    """Our own errors as they are; the NATS client's mapped; None for anything unexpected."""
    if isinstance(exc, ReconcileError):
        return exc
    if isinstance(exc, KeyWrongLastSequenceError):
        return Conflict(str(exc))
    if isinstance(exc, nats.errors.Error | ServiceUnavailableError | TimeoutError | OSError):
        return Transient(f"{type(exc).__name__}: {exc}")
    return None
