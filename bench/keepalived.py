"""Section 2: keepalived on the same topology, with the same client and the same kill.

The network is the lab's own (``Lab.build_network``: a bridge namespace, two node namespaces
with eth0 on the bridge, a client namespace, the same addresses and ARP sysctls); nothing of
Vigil runs in it. Each node runs keepalived (VRRP only) and the lab's demo app bound to 0.0.0.0,
which says which node served. Both nodes are ``state BACKUP``, priority 100, ``nopreempt``: a
revived node stays backup, so each run kills whichever node is master, exactly like the Vigil
runs. A fresh pid file name per start avoids "daemon is already running" after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vigil.lab.lab import Lab, LabState
from vigil.lab.netns import LabError, ip

from .failover import Log, client_outage, client_probe, teardown
from .netfault import node_loss

VIP = "10.213.0.101"
NODES = ["n1", "n2"]


@dataclass(frozen=True)
class KaConfig:
    key: str
    label: str
    version: int
    advert: float

    def render(self, node: str) -> str:
        version = f"    vrrp_version {self.version}\n" if self.version != 2 else ""
        return (
            "global_defs {\n"
            f"    router_id {node}\n"
            f"{version}"
            "}\n"
            "vrrp_instance VI_1 {\n"
            "    state BACKUP\n"
            "    interface eth0\n"
            "    virtual_router_id 51\n"
            "    priority 100\n"
            f"    advert_int {self.advert:g}\n"
            "    nopreempt\n"
            "    virtual_ipaddress {\n"
            f"        {VIP}/24 dev eth0\n"
            "    }\n"
            "}\n"
        )


CONFIGS = {
    "v2": KaConfig("v2", "keepalived advert_int 1 (VRRPv2, its default)", 2, 1.0),
    "v3": KaConfig("v3", "keepalived vrrp_version 3, advert_int 0.1", 3, 0.1),
}


@dataclass
class KaRun:
    victim: str
    t_fault: float
    served_s: float | None = None
    outage_s: float | None = None
    master_s: float | None = None  # fault -> the survivor logged "Entering MASTER STATE"
    failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class KeepalivedLab:
    def __init__(self, prefix: str, cfg: KaConfig, log: Log) -> None:
        self.lab = Lab(prefix)
        self.cfg = cfg
        self.log = log
        self.state = LabState(prefix, list(NODES), 0)
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {n: [] for n in NODES}
        self.lines: dict[str, list[tuple[float, str]]] = {n: [] for n in NODES}
        self.starts = 0
        self.commands: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self) -> None:
        teardown(self.lab)
        shutil.rmtree(self.lab.dir, ignore_errors=True)
        self.lab.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lab.build_network(self.state)
            for node in NODES:
                (self.lab.dir / f"{node}.conf").write_text(self.cfg.render(node))
                self.start(node)
        except BaseException:
            self.down()
            raise

    def start(self, node: str) -> None:
        ns = self.state.ns(node)
        self.starts += 1
        env = {**self.lab.env(), "VIGIL_NODE": node, "VIGIL_GROUP": "vrrp"}
        app = [sys.executable, "-m", "vigil.lab.demo_app", "--bind", "0.0.0.0", "--port", "8080"]
        d = self.lab.dir
        ka = [
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
            "-f", str(d / f"{node}.conf"),
            "-p", str(d / f"{node}-{self.starts}.pid"),
            "-r", str(d / f"{node}-{self.starts}-vrrp.pid"),
        ]  # fmt: skip
        if self.starts <= len(NODES):
            self.commands += [
                f"ip netns exec {ns} {' '.join(ka)}",
                f"ip netns exec {ns} {' '.join(app)}",
            ]
        with (d / f"{node}-app.log").open("ab") as log:
            self.procs[node].append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *app],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                )
            )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *ka],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as a whole
        )  # fmt: skip
        self.procs[node].append(proc)
        threading.Thread(target=self._read, args=(node, proc), daemon=True).start()

    def _read(self, node: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with (self.lab.dir / f"{node}-keepalived.log").open("a") as log:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                t = time.time()
                self.lines[node].append((t, line))
                log.write(f"{t:.3f} {line}\n")
                log.flush()

    def kill(self, node: str) -> float:
        pgids = [p.pid for p in self.procs[node] if p.poll() is None]
        t0, _ = node_loss(self.state.ns(node), pgids)
        return t0

    def revive(self, node: str) -> None:
        for proc in self.procs.pop(node, []):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs[node] = []
        ns = self.state.ns(node)
        # The dead node's kernel still has the VIP (keepalived died without removing it): with
        # the link back up, two nodes would own it. Remove it before the link comes up.
        ip("addr", "del", f"{VIP}/24", "dev", "eth0", ns=ns, check=False)
        ip("link", "set", "eth0", "up", ns=ns)
        self.start(node)

    def down(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for procs in self.procs.values():
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        teardown(self.lab)  # anything else left in our namespaces, and the namespaces

    # -- one run -----------------------------------------------------------------------------
    def master_since(self, node: str, t: float) -> float | None:
        hits = [ts for ts, line in self.lines[node] if ts >= t and "Entering MASTER STATE" in line]
        return min(hits) if hits else None

    async def node_loss(self) -> KaRun:
        async def kill(victim: str) -> float:
            return await asyncio.to_thread(self.kill, victim)

        probe = client_probe(self.state, f"{VIP}:8080")
        try:
            out = await client_outage(probe, kill, self.cfg.advert, tail=0.1)
        finally:
            await asyncio.to_thread(probe.stop)
        run = KaRun(out.victim, out.t_fault, error=out.error)
        if out.served_at is None:
            return run
        run.served_s, run.outage_s, run.failures = out.served_s, out.outage_s, out.failures
        survivor, t0, victim = next(n for n in NODES if n != out.victim), out.t_fault, out.victim
        master = self.master_since(survivor, t0)
        run.master_s = master - t0 if master else None
        await asyncio.to_thread(self.revive, victim)
        await self.settle(victim)
        return run

    async def settle(self, node: str) -> None:
        """Wait until the revived node has come up as backup and heard the master a while."""
        t = time.time()
        deadline = time.monotonic() + 20
        while not any(
            ts >= t - 1 and "Entering BACKUP STATE" in line for ts, line in self.lines[node]
        ):
            if time.monotonic() > deadline:
                raise LabError(f"keepalived on {node} never entered BACKUP state")
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(1.0, 2 * self.cfg.advert))


@dataclass
class KaResult:
    cfg: KaConfig
    runs: list[KaRun]
    commands: list[str]
    config_text: str


async def run_config(prefix: str, key: str, runs: int, log: Log) -> KaResult:
    cfg = CONFIGS[key]
    kl = KeepalivedLab(prefix, cfg, log)
    await asyncio.to_thread(kl.up)
    try:
        out: list[KaRun] = []
        for i in range(runs):
            run = await kl.node_loss()
            out.append(run)
            if run.served_s is None:
                log(f"  {cfg.key} node loss {i + 1}/{runs}: kill {run.victim}: ERROR {run.error}")
            else:
                m = f"{run.master_s * 1000:.0f}" if run.master_s is not None else "?"
                log(
                    f"  {cfg.key} node loss {i + 1}/{runs}: kill {run.victim}: served after "
                    f"{run.served_s * 1000:.0f} ms (survivor MASTER at {m} ms) {run.failures}"
                )
        return KaResult(cfg, out, kl.commands, cfg.render("n1"))
    finally:
        await asyncio.to_thread(kl.down)
        shutil.rmtree(Path(kl.lab.dir), ignore_errors=True)
