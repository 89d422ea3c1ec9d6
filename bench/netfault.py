"""The one node-loss procedure both Vigil and keepalived get, so their clocks start alike.

SIGKILL every process of the node (whole process groups first, so no child outlives its parent
long enough to say goodbye: keepalived's VRRP child releases the address politely when its
parent merely dies), then take the node's link down so its kernel stops answering too. The
fault time is taken just before the first SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

from vigil.lab.lab import LabState
from vigil.lab.netns import ip, pids_in


def node_loss(ns: str, pgids: Iterable[int] = ()) -> tuple[float, int]:
    """Kill everything in namespace ``ns`` and its link; returns (fault time, processes)."""
    pids = pids_in(ns)
    t0 = time.time()
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    ip("link", "set", "eth0", "down", ns=ns)
    return t0, len(pids)


def vigil_node_loss(prefix: str, node: str) -> tuple[float, int]:
    """``Lab.kill`` with the fault time taken at the SIGKILL (not before the pid lookup); the
    lab's state forgets the node's processes exactly as ``Lab.kill`` does, so ``revive`` works."""
    state = LabState.load(prefix)
    if state is None or node not in state.nodes:
        raise ValueError(f"no node {node} in lab {prefix}")
    ns = state.ns(node)
    result = node_loss(ns)
    state.procs = [p for p in state.procs if p.ns != ns]
    state.save()
    return result
