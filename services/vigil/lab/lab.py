"""Building, breaking and removing the lab. Every process is recorded by PID in a state file;
``down`` also finds namespaces by prefix, so it cleans up after a lab that crashed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

from vigil.wire.cluster import ClusterSpec

from ..core import embedded
from ..core import status as status_mod
from ..core.bus import Bus
from ..core.clusterconfig import store
from ..core.subjects import Subjects
from .netns import LabError, exec_in, ip, namespaces, pids_in

SUBNET = "10.213.0"
BUS_IP = f"{SUBNET}.2"
CLIENT_IP = f"{SUBNET}.250"
NATS_PORT = 4222


def lab_dir(prefix: str) -> Path:
    return Path(os.environ.get("VIGIL_LAB_DIR", "/run/vigil")) / prefix


def node_ip(index: int) -> str:
    return f"{SUBNET}.{11 + index}"


@dataclass
class Proc:
    role: str
    ns: str
    pid: int


@dataclass
class LabState:
    prefix: str
    nodes: list[str]
    host_port: int
    procs: list[Proc] = field(default_factory=list)

    @property
    def host_url(self) -> str:
        return f"nats://127.0.0.1:{self.host_port}"

    @property
    def bus_url(self) -> str:
        return f"nats://{BUS_IP}:{NATS_PORT}"

    def ns(self, who: str) -> str:
        return f"{self.prefix}-{who}"

    @classmethod
    def load(cls, prefix: str) -> LabState | None:
        path = lab_dir(prefix) / "lab.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["procs"] = [Proc(**p) for p in raw.get("procs", [])]
        return cls(**raw)

    def save(self) -> None:
        path = lab_dir(self.prefix) / "lab.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))


def require_root() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (CAP_NET_ADMIN) to create network namespaces; run as root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the lab needs the '{tool}' command (Debian: apt-get install iproute2 nftables)"
    return None


class Lab:
    def __init__(self, prefix: str = "vlab") -> None:
        self.prefix = prefix
        self.dir = lab_dir(prefix)

    # -- processes -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        # Apps and services find this interpreter's tools (python3, vigil) first.
        bindir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }

    def spawn(self, state: LabState, role: str, ns: str | None, argv: list[str]) -> Proc:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / f"{role}.log").open("ab") as log:
            full = ["ip", "netns", "exec", ns, *argv] if ns else argv
            proc = subprocess.Popen(
                full,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env(),
                cwd=self.dir,
            )
        record = Proc(role, ns or "", proc.pid)
        state.procs.append(record)
        state.save()
        return record

    def vigil(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vigil.cli.main", *args]

    def start_node(self, state: LabState, node: str) -> None:
        ns = state.ns(node)
        common = ["--nats", state.bus_url]
        self.spawn(
            state,
            f"{node}-address",
            ns,
            self.vigil("address", "--node", node, "--interface", "eth0", *common),
        )
        self.spawn(
            state,
            f"{node}-supervisor",
            ns,
            self.vigil("supervisor", "--node", node, "--state-dir", str(self.dir / node), *common),
        )

    # -- up ------------------------------------------------------------------------------------
    def up(self, spec: ClusterSpec, timeout: float = 60.0) -> LabState:
        if LabState.load(self.prefix) is not None or any(
            n.startswith(f"{self.prefix}-") for n in namespaces()
        ):
            raise LabError(f"lab {self.prefix!r} is already up; run 'vigil lab down' first")
        nodes = [n.name for n in spec.nodes]
        if self.dir.exists():
            shutil.rmtree(self.dir)  # a lab starts fresh: no bus state or logs of an older one
        state = LabState(self.prefix, nodes, embedded.free_port())
        state.save()
        try:
            self.build_network(state)
            self.start_services(state)
            asyncio.run(self.apply_and_wait(state, spec, timeout))
        except BaseException:
            self.down()
            raise
        return state

    def build_network(self, state: LabState) -> None:
        bus = state.ns("bus")
        for who in ("bus", *state.nodes, "client"):
            ip("netns", "add", state.ns(who))
            ip("link", "set", "lo", "up", ns=state.ns(who))
        ip("link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0", ns=bus)
        ip("addr", "add", f"{BUS_IP}/24", "dev", "br0", ns=bus)
        ip("link", "set", "br0", "up", ns=bus)
        hosts = [(n, node_ip(i)) for i, n in enumerate(state.nodes)] + [("client", CLIENT_IP)]
        for who, address in hosts:
            ns = state.ns(who)
            ip(
                "link",
                "add",
                "name",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                who,
                "netns",
                bus,
            )
            ip("link", "set", who, "master", "br0", "up", ns=bus)
            ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)
            # Answer ARP only with the address the question was about, and never advertise a
            # virtual address as the source of our own ARP requests.
            exec_in(
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.arp_ignore=1",
            )

    def start_services(self, state: LabState) -> None:
        bus = state.ns("bus")
        self.spawn(
            state, "nats-server", bus, embedded.server_command(BUS_IP, NATS_PORT, self.dir / "nats")
        )
        self.spawn(
            state,
            "forwarder",
            None,
            [
                sys.executable,
                "-m",
                "vigil.lab.forward",
                "--ns",
                bus,
                "--listen-port",
                str(state.host_port),
                "--to",
                f"{BUS_IP}:{NATS_PORT}",
            ],
        )
        embedded.wait_ready("127.0.0.1", state.host_port)
        for role in ("membership", "placement"):
            self.spawn(state, role, bus, self.vigil(role, "--nats", state.bus_url))
        for node in state.nodes:
            self.start_node(state, node)

    async def apply_and_wait(self, state: LabState, spec: ClusterSpec, timeout: float) -> None:
        bus = await self.connect(state, "lab")
        try:
            await store(bus, spec)
            await wait_for(
                bus,
                lambda v: all(g.node == g.preferred and g.mode == "normal" for g in v.groups),
                timeout,
                "every group running on its preferred node",
            )
        finally:
            await bus.close()

    async def connect(self, state: LabState, service: str) -> Bus:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await Bus.connect([state.host_url], Subjects(), service, name="host")
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    # -- faults --------------------------------------------------------------------------------
    def state(self) -> LabState:
        state = LabState.load(self.prefix)
        if state is None:
            raise LabError(f"no lab {self.prefix!r} is up; run 'vigil lab up'")
        return state

    def kill(self, node: str) -> list[int]:
        """A hard node loss: SIGKILL everything in the node's namespace, then its link down."""
        state = self.state()
        if node not in state.nodes:
            raise LabError(f"unknown node {node!r}; the lab has {', '.join(state.nodes)}")
        ns = state.ns(node)
        killed = pids_in(ns)
        for pid in killed:
            _signal(pid, signal.SIGKILL)
        ip("link", "set", "eth0", "down", ns=ns)
        state.procs = [p for p in state.procs if p.ns != ns]
        state.save()
        return killed

    def revive(self, node: str) -> None:
        state = self.state()
        if node not in state.nodes:
            raise LabError(f"unknown node {node!r}; the lab has {', '.join(state.nodes)}")
        ns = state.ns(node)
        if any(p.ns == ns for p in state.procs):
            raise LabError(f"node {node} is running; kill it first")
        ip("link", "set", "eth0", "up", ns=ns)
        self.start_node(state, node)

    # -- down ----------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every process and remove every namespace of this lab; safe to run twice."""
        state = LabState.load(self.prefix)
        ours = [n for n in namespaces() if n.startswith(f"{self.prefix}-")]
        # A recorded PID counts only if it still runs one of ours: after a crash and a reboot
        # the number may belong to someone else.
        pids = {p.pid for p in state.procs if _ours(p)} if state else set()
        for ns in ours:
            pids.update(pids_in(ns))
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        # A supervisor that saw its app die from our SIGTERM may have started it again before it
        # stopped itself: sweep the namespaces until nothing runs in them any more.
        deadline = time.monotonic() + 5
        while (left := [p for ns in ours for p in pids_in(ns)]) and time.monotonic() < deadline:
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.05)
        for ns in ours:
            ip("netns", "del", ns, check=False)
        (self.dir / "lab.json").unlink(missing_ok=True)
        return ours


def _ours(proc: Proc) -> bool:
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    except OSError:
        return False
    # Vigil processes run as `python -m vigil.<module>` (or the `vigil` script)
    return b"\x00vigil." in cmdline or b"/vigil\x00" in cmdline or b"nats-server" in cmdline


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


async def wait_for(bus: Bus, ok: object, timeout: float, what: str) -> status_mod.StatusView:
    """Poll the status until ``ok(view)`` holds, or fail with what we were waiting for."""
    assert callable(ok)
    deadline = time.monotonic() + timeout
    view = await status_mod.read(bus)
    while not ok(view):
        if time.monotonic() > deadline:
            raise LabError(
                f"timed out after {timeout:g}s waiting for {what}; status:\n"
                + status_mod.render_table(view)
            )
        await asyncio.sleep(0.1)
        view = await status_mod.read(bus)
    return view


def vip(spec: ClusterSpec, group: str) -> str:
    g = spec.group(group)
    if g is None:
        raise LabError(f"unknown group {group!r}")
    return str(IPv4Interface(g.address).ip)
