"""The machine the numbers come from, and the Debian packages the bench installs itself."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vigil.core import embedded
from vigil.lab.netns import namespaces

#: Debian packages the bench needs beyond ``make setup``: keepalived for the side-by-side, and
#: util-linux for taskset (the busy loop pinned to one core).
PACKAGES = {"keepalived": "keepalived", "taskset": "util-linux"}


def ensure_packages() -> list[str]:
    """Install what is missing (as root, with apt-get); returns what was installed."""
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SystemExit(f"bench: missing {', '.join(missing)}; install them as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Install, never start: a keepalived started by its package in the host's namespace would
    # be a VRRP speaker outside the lab. policy-rc.d exit 101 = "no service starts" (Debian).
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    return missing


def _run(*argv: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (proc.stdout or proc.stderr).strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "n/a"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


@dataclass
class Facts:
    nproc: int
    cpu: str
    kernel: str
    debian: str
    python: str
    keepalived: str
    nats_server: str
    memory: str
    load_before: str
    load_after: str = ""
    other_namespaces: list[str] = field(default_factory=list)
    code: str = ""
    code_after: str = ""

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("CPUs (nproc)", str(self.nproc)),
            ("CPU model", self.cpu),
            ("memory", self.memory),
            ("kernel", self.kernel),
            ("Debian", self.debian),
            ("Python", self.python),
            ("keepalived", self.keepalived),
            ("nats-server", self.nats_server),
            ("Vigil code measured", self.code),
            (
                "Vigil code at the end of the run",
                "unchanged"
                if self.code_after in ("", self.code)
                else f"CHANGED during the run: {self.code_after} (processes started after that "
                "change ran the newer code)",
            ),
            ("load average before / after", f"{self.load_before} / {self.load_after}"),
            (
                "other people's network namespaces on the machine at start",
                str(len(self.other_namespaces)),
            ),
        ]


def facts(prefix: str) -> Facts:
    mem = "n/a"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        nats_version = _run(embedded.server_binary(), "--version")
    except FileNotFoundError:
        nats_version = "n/a"
    return Facts(
        nproc=os.cpu_count() or 0,
        cpu=cpu_model(),
        kernel=platform.release(),
        debian=_read("/etc/debian_version"),
        python=sys.version.split()[0],
        keepalived=_run("keepalived", "--version").splitlines()[0]
        if shutil.which("keepalived")
        else "not installed",
        nats_server=nats_version,
        memory=mem,
        load_before=loadavg(),
        other_namespaces=[n for n in namespaces() if not n.startswith(prefix)],
        code=fingerprint(),
    )


def fingerprint() -> str:
    """Which code the numbers belong to: a hash of every .py file of services/ and schemas/
    (the tree changes while people work; the bench does not use git)."""
    root = Path(__file__).resolve().parent.parent
    files = sorted(p for d in ("services", "schemas") for p in (root / d).rglob("*.py"))
    digest = hashlib.sha256()
    newest = 0.0
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest))
    return (
        f"sha256 {digest.hexdigest()[:16]} of {len(files)} files in services/ and schemas/ "
        f"(newest change {when})"
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "n/a"
