"""A fence agent for the lab, in the ``fence-agents`` interface: ``fence_vigil_lab`` (or
``python -m vigil.lab.fence_agent``) reads ``key=value`` lines on stdin, as Pacemaker's stonith
and Vigil's placement write them, and cuts a lab node's power: ``action=off`` kills every
process of the node's namespace by PID and takes its link down (``vigil lab kill``).

Options: ``plug`` (or ``port``) the node, ``lab`` the lab's prefix (default ``vlab``).
Actions: ``off``, ``on`` (``vigil lab revive``), ``status`` (exit 0 on, 2 off) and ``monitor``
(exit 0 when the lab is up). Exit 1 with a line on stderr on failure. An ``off`` of a node that
is already off succeeds: an agent may be run again after a replica died mid-fence.
"""

from __future__ import annotations

import sys

from .lab import Lab
from .netns import LabError

OK, FAILED, OFF = 0, 1, 2  # exit codes: done (or on), failed, off


def parse(text: str) -> dict[str, str]:
    """``key=value`` lines; blank lines and ``#`` comments skipped (as fence-agents do)."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            options[key.strip()] = value.strip()
    return options


def act(options: dict[str, str]) -> int:
    action = options.get("action", "off")
    lab = Lab(options.get("lab", "vlab"))
    if action == "monitor":
        lab.state()
        return OK
    node = options.get("plug") or options.get("port")
    if not node:
        raise LabError("no plug= (the node to fence)")
    state = lab.state()
    running = any(p.ns == lab.node_ns(state, node) for p in state.procs)
    if action == "status":
        return OK if running else OFF
    if action == "off":
        if running:
            lab.kill(node)
        return OK
    if action == "on":
        if not running:
            lab.revive(node)
        return OK
    raise LabError(f"unsupported action {action!r} (off, on, status, monitor)")


def main() -> int:
    try:
        return act(parse(sys.stdin.read()))
    except LabError as exc:
        print(f"fence_vigil_lab: {exc}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    raise SystemExit(main())
