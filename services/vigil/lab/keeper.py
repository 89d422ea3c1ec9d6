"""Keep a process running, like systemd's ``Restart=always``: the lab's and ``vigil up``'s
supervising parent of every Vigil process and NATS server.

::

                 start                 exit (any status)
    (stopped) ---------> [running] ----------------------> [backing off] --+
        ^                   ^   |                             |            |
        |                   |   | hold (SIGUSR1)              | delay over |
        |                   |   v                             v            |
        |                   | [held: the next exit is not     (running)    |
        |                   |  followed by a restart]                      |
        |                   +------------------------- release (SIGUSR2) --+
        +---- stop (SIGTERM/SIGINT): SIGTERM to the child, SIGKILL after a grace; no restart

The delay doubles from 0.1 s up to 5 s while the child keeps dying young, and falls back to
0.1 s once it has run for 10 s: a crash loop costs little, a rare crash is repaired at once.

As a program (``python -m vigil.lab.keeper --name R --status FILE -- ARGV``) it keeps one child
and writes ``FILE`` (JSON: the child's pid, restarts, held) at every change, so the lab can tell
who the current child is; the lab kills that child to rehearse a crash, and sends the keeper
SIGUSR1 first when the child must stay down (an outage) until SIGUSR2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FIRST_DELAY = 0.1
MAX_DELAY = 5.0
HEALTHY_AFTER = 10.0  # a child that ran this long starts the backoff over
STOP_GRACE = 5.0


@dataclass
class Backoff:
    """The restart delay: pure, the caller passes the time."""

    delay: float = FIRST_DELAY

    def after_exit(self, ran_for: float) -> float:
        """The delay before the next start of a child that ran ``ran_for`` seconds."""
        if ran_for >= HEALTHY_AFTER:
            self.delay = FIRST_DELAY
        wait = self.delay
        self.delay = min(self.delay * 2, MAX_DELAY)
        return wait


class Kept:
    """One child kept running; ``tick`` (called often) reaps and restarts it."""

    def __init__(self, name: str, argv: list[str], **popen: object) -> None:
        self.name = name
        self.argv = argv
        self.popen = popen
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_at: float | None = None
        self.restarts = 0
        self.held = False
        self.backoff = Backoff()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.started = time.monotonic()
        self.restart_at = None
        try:
            self.proc = subprocess.Popen(self.argv, **self.popen)  # type: ignore[call-overload]
        except OSError as exc:  # counts as an immediate exit: retried with the backoff
            log(f"{self.name} did not start: {exc}")
            self.proc = None
            self.restart_at = self.started + self.backoff.after_exit(0.0)

    def tick(self, now: float) -> bool:
        """Reap a dead child and schedule or make its restart; True when something changed."""
        changed = False
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            changed = True
            if not self.held:
                wait = self.backoff.after_exit(now - self.started)
                self.restart_at = now + wait
                log(f"{self.name} exited ({code}); restart in {wait:.1f}s")
            else:
                log(f"{self.name} exited ({code}); held down")
        if self.proc is None and self.restart_at is not None and now >= self.restart_at:
            self.restarts += 1
            self.start()
            log(f"{self.name} started again (#{self.restarts}, pid {self.proc_pid()})")
            changed = True
        return changed

    def hold(self) -> None:
        self.held = True
        self.restart_at = None

    def release(self) -> None:
        """Start again now (an operator's ``start``): the backoff does not apply."""
        self.held = False
        if self.proc is None:
            self.restart_at = time.monotonic()

    def stop(self, grace: float = STOP_GRACE) -> None:
        self.hold()
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def proc_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def status(self) -> dict[str, object]:
        return {"pid": self.pid, "restarts": self.restarts, "held": self.held}


def log(text: str) -> None:
    print(f"keeper: {text}", file=sys.stderr, flush=True)


def write_status(path: Path, kept: Kept) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keeper": os.getpid(), **kept.status()}))
    tmp.replace(path)  # readers never see half a file


def read_status(path: Path) -> dict[str, object] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="keep a process running (Restart=always)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--status", required=True, type=Path, help="JSON status file")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command after --")
    # Signals are taken synchronously (sigtimedwait): the keeper sleeps until a child exits or
    # someone signals it, with no polling; its children start with the mask cleared.
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    kept = Kept(
        args.name, cmd, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
    )
    kept.start()
    write_status(args.status, kept)
    while True:
        now = time.monotonic()
        wait = 1.0 if kept.restart_at is None else max(0.0, kept.restart_at - now)
        got = signal.sigtimedwait(watched, wait)
        signo = got.si_signo if got is not None else None
        if signo in (signal.SIGTERM, signal.SIGINT):
            break
        if signo == signal.SIGUSR1:
            kept.hold()
        elif signo == signal.SIGUSR2:
            kept.release()
        if kept.tick(time.monotonic()) or signo is not None:
            write_status(args.status, kept)
    kept.stop()
    write_status(args.status, kept)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
