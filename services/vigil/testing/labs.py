"""A lab of our own for a test: a fresh prefix, and a teardown that proves nothing is left."""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass, field

from vigil.core.credentials import Credentials
from vigil.lab.lab import Lab, LabState, lab_dir
from vigil.lab.netns import pids_in

from .procs import alive, run, signal_all


@dataclass
class Prefix:
    """A lab prefix of our own; ``pids`` collects process IDs the teardown must see dead."""

    name: str
    pids: set[int] = field(default_factory=set)

    def ns(self, who: str) -> str:
        return f"{self.name}-{who}"

    def namespaces(self) -> list[str]:
        """This lab's namespaces, as ``ip netns list`` shows them."""
        out = run(["ip", "netns", "list"]).stdout
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(f"{self.name}-")]

    def note_pids(self) -> None:
        """Remember every PID the lab recorded and every process in its namespaces."""
        state = LabState.load(self.name)
        if state is not None:
            self.pids.update(p.pid for p in state.procs)
        for ns in self.namespaces():
            self.pids.update(pids_in(ns))


def lab_credentials(prefix: str, role: str) -> Credentials:
    """What ``role`` (operator, reader, node-<name>, ...) connects to the lab ``prefix`` with:
    its nkey seed and the lab's CA (nothing for a lab brought up ``--insecure``)."""
    lab = Lab(prefix)
    return lab.credentials(lab.state(), role)


def lab_creds_args(prefix: str, role: str) -> list[str]:
    """``--creds FILE --tls-ca CA`` for a ``vigil`` command run as ``role`` against the lab."""
    lab = Lab(prefix)
    return lab.creds_args(lab.state(), role)


def lab_creds_env(prefix: str, role: str) -> dict[str, str]:
    """``VIGIL_CREDS`` and ``VIGIL_TLS_CA`` for a process run as ``role`` against the lab."""
    c = lab_credentials(prefix, role)
    return {k: str(v) for k, v in (("VIGIL_CREDS", c.creds), ("VIGIL_TLS_CA", c.tls_ca)) if v}


def lab_teardown(prefix: Prefix, keep_logs: bool = True) -> None:
    """Resume, remove, and prove nothing is left; the lab's logs stay only if asked to."""
    prefix.note_pids()
    for ns in prefix.namespaces():  # a frozen (SIGSTOPped) process must not outlive us
        signal_all(pids_in(ns), signal.SIGCONT)
    signal_all(sorted(prefix.pids), signal.SIGCONT)
    Lab(prefix.name).down()
    left = prefix.namespaces()
    assert not left, f"lab {prefix.name} left namespaces behind: {left}"
    survivors = [pid for pid in sorted(prefix.pids) if alive(pid)]
    assert not survivors, f"lab {prefix.name} left processes alive: {survivors}"
    assert LabState.load(prefix.name) is None, "lab state file left behind"
    if not keep_logs:
        shutil.rmtree(lab_dir(prefix.name), ignore_errors=True)
