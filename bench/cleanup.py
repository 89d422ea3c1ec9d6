"""Leaving nothing behind: processes of ours that outlived ``Lab.down``.

``Lab.down`` collects the PIDs in the lab's namespaces once, SIGTERMs them, then SIGKILLs that
list and deletes the namespaces. A supervisor that sees its app die from the SIGTERM may start
it again before it stops itself; that new process is in no list, and it keeps running in a
namespace that no longer has a name. Every process a lab starts writes its output into the lab's
directory or runs in it, which is how we find ours again (never by name).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def sweep(directory: Path) -> list[int]:
    """SIGKILL every process whose stdout or working directory is inside ``directory``."""
    root = str(directory.resolve())
    killed: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            places = [os.readlink(f"/proc/{pid}/fd/1"), os.readlink(f"/proc/{pid}/cwd")]
        except OSError:
            continue
        if any(p == root or p.startswith(root + "/") for p in places):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed
