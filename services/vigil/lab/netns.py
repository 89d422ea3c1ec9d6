"""Thin wrappers over iproute2 for the lab, and entering a namespace from Python."""

from __future__ import annotations

import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """A lab operation failed; the message says which command and why, in one line."""


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def exec_in(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"in {ns}: {' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def enter(ns: str) -> None:
    """Move this (single-threaded) process into network namespace ``ns``. Sockets created
    before the call stay where they were: that is how the forwarder bridges host and lab."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)
