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
from typing import TYPE_CHECKING

from vigil.wire.cluster import ClusterSpec

from ..core import embedded
from ..core import status as status_mod
from ..core.bus import Bus, ensure_stream, kv
from ..core.clusterconfig import store
from ..core.credentials import Credentials
from ..core.subjects import Subjects
from ..secure import bundle as bundle_mod
from ..secure.serverconf import member_conf
from . import keeper
from .netns import LabError, exec_in, ip, namespaces, pids_in

if TYPE_CHECKING:
    from collections.abc import Callable

SUBNET = "10.213.0"
BUS_IP = f"{SUBNET}.2"
CLIENT_IP = f"{SUBNET}.250"
NATS_PORT = 4222  # nats-<i> listens on NATS_PORT + i - 1 (cluster routes on that + 2000)
REPLICAS = 2  # of membership and of placement


def lab_dir(prefix: str) -> Path:
    return Path(os.environ.get("VIGIL_LAB_DIR", "/run/vigil")) / prefix


def node_ip(index: int) -> str:
    return f"{SUBNET}.{11 + index}"


@dataclass
class Proc:
    """A process the lab started. ``kept``: ``pid`` is its keeper (``vigil.lab.keeper``),
    which restarts the real process; the current one's pid is in the keeper's status file."""

    role: str
    ns: str
    pid: int
    kept: bool = False


@dataclass
class LabState:
    prefix: str
    nodes: list[str]
    host_port: int
    procs: list[Proc] = field(default_factory=list)
    nats_servers: int = 1
    host_ports: list[int] = field(default_factory=list)  # the host's door to each server
    frozen: list[str] = field(default_factory=list)
    partitioned: list[str] = field(default_factory=list)
    # auth + TLS (the default): every process has its role's credentials (``Lab.bundle``)
    secure: bool = True

    @property
    def host_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.host_ports or [self.host_port]]

    @property
    def host_url(self) -> str:
        """The door to the first server (every door: ``host_urls``)."""
        return f"nats://127.0.0.1:{self.host_port}"

    @property
    def bus_urls(self) -> list[str]:
        return [f"nats://{BUS_IP}:{NATS_PORT + i}" for i in range(self.nats_servers)]

    @property
    def bus_url(self) -> str:
        """Every server, comma-separated: what the services are given."""
        return ",".join(self.bus_urls)

    def ns(self, who: str) -> str:
        return f"{self.prefix}-{who}"

    def proc(self, role: str) -> Proc | None:
        return next((p for p in self.procs if p.role == role), None)

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
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


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
    def env(self, state: LabState | None = None) -> dict[str, str]:
        # Apps and services find this interpreter's tools (python3, vigil) first.
        bindir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        if state is not None:  # buckets and history: one copy per server, up to three
            env["VIGIL_REPLICAS"] = str(min(3, state.nats_servers))
        return env

    def spawn(
        self, state: LabState, role: str, ns: str | None, argv: list[str], *, kept: bool = True
    ) -> Proc:
        """Start ``argv`` in namespace ``ns``; ``kept`` under a keeper that restarts it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if kept:
            argv = [
                sys.executable, "-m", "vigil.lab.keeper",
                "--name", role, "--status", str(self.status_file(role)), "--", *argv,
            ]  # fmt: skip
        with (self.dir / f"{role}.log").open("ab") as log:
            full = ["ip", "netns", "exec", ns, *argv] if ns else argv
            proc = subprocess.Popen(
                full,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env(state),
                cwd=self.dir,
            )
        record = Proc(role, ns or "", proc.pid, kept)
        state.procs.append(record)
        state.save()
        return record

    # -- credentials ---------------------------------------------------------------------------
    @property
    def bundle(self) -> bundle_mod.Bundle:
        """The lab's credentials, CA and server configs (``vigil secure init`` for its nodes)."""
        return bundle_mod.Bundle(self.dir / "secure")

    def credentials(self, state: LabState, role: str) -> Credentials:
        """What ``role`` (operator, reader, membership, placement, node-<name>) connects with;
        nothing in an insecure lab."""
        if not state.secure:
            return Credentials()
        return Credentials(self.bundle.creds(role), self.bundle.ca)

    def creds_args(self, state: LabState, role: str) -> list[str]:
        if not state.secure:
            return []
        return ["--creds", str(self.bundle.creds(role)), "--tls-ca", str(self.bundle.ca)]

    def status_file(self, role: str) -> Path:
        return self.dir / f"{role}.keeper.json"

    def kept_status(self, role: str) -> dict[str, object]:
        return keeper.read_status(self.status_file(role)) or {}

    def vigil(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vigil.cli.main", *args]

    def start_node(self, state: LabState, node: str) -> None:
        ns = state.ns(node)
        common = ["--nats", state.bus_url, *self.creds_args(state, f"node-{node}")]
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
    def up(
        self,
        spec: ClusterSpec,
        timeout: float = 60.0,
        nats_servers: int = 3,
        *,
        secure: bool = True,
    ) -> LabState:
        """Build the lab and wait until every group runs on its preferred node. The default is
        the production topology: three NATS servers (R3) with auth and TLS (clients and
        routes), two membership and two placement replicas; ``nats_servers=1`` is a lighter
        lab, ``secure=False`` an anonymous, plaintext one."""
        if nats_servers not in (1, 3):
            raise LabError(f"nats_servers: {nats_servers} (1 or 3)")
        if LabState.load(self.prefix) is not None or any(
            n.startswith(f"{self.prefix}-") for n in namespaces()
        ):
            raise LabError(f"lab {self.prefix!r} is already up; run 'vigil lab down' first")
        nodes = [n.name for n in spec.nodes]
        if self.dir.exists():
            shutil.rmtree(self.dir)  # a lab starts fresh: no bus state or logs of an older one
        ports = [embedded.free_port() for _ in range(nats_servers)]
        state = LabState(
            self.prefix, nodes, ports[0], nats_servers=nats_servers, host_ports=ports, secure=secure
        )
        state.save()
        if secure:  # the host reaches the servers as 127.0.0.1, the lab's processes as BUS_IP
            bundle_mod.init(
                self.bundle.dir,
                nodes,
                subjects=Subjects(),
                names=[*bundle_mod.DEFAULT_NAMES, BUS_IP],
            )
        try:
            self.build_network(state)
            self.start_bus(state)
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

    def start_bus(self, state: LabState) -> None:
        """The NATS servers, the host's doors to them, and the buckets."""
        bus = state.ns("bus")
        ports = [NATS_PORT + i for i in range(state.nats_servers)]
        commands = (
            self.secure_server_commands(state, ports)
            if state.secure
            else embedded.cluster_commands(BUS_IP, ports, self.dir)
        )
        for i, argv in enumerate(commands):
            self.spawn(state, f"nats-{i + 1}", bus, argv)
        doors = [f"{port}={BUS_IP}:{to}" for port, to in zip(state.host_ports, ports, strict=True)]
        self.spawn(
            state,
            "forwarder",
            None,
            [sys.executable, "-m", "vigil.lab.forward", "--ns", bus, *doors],
            kept=False,
        )
        for port in state.host_ports:
            embedded.wait_ready("127.0.0.1", port)
        asyncio.run(self.prepare_bus(state))

    def secure_server_commands(self, state: LabState, ports: list[int]) -> list[list[str]]:
        """One config file per server beside the bundle's auth.conf (includes are relative)."""
        cluster_ports = [p + 2000 for p in ports]
        routes = [f"{BUS_IP}:{p}" for p in cluster_ports] if len(ports) > 1 else None
        out = []
        for i, (port, cluster_port) in enumerate(zip(ports, cluster_ports, strict=True)):
            name = f"nats-{i + 1}"
            conf = self.bundle.dir / f"{name}.conf"
            conf.write_text(
                member_conf(
                    name,
                    f"{BUS_IP}:{port}",
                    str(self.dir / name / "jetstream"),
                    cluster_listen=f"{BUS_IP}:{cluster_port}" if routes else None,
                    routes=routes,
                )
            )
            out.append([embedded.server_binary(), "--config", str(conf)])
        return out

    def start_replicas(self, state: LabState, role: str) -> None:
        for i in range(REPLICAS):
            argv = self.vigil(
                role, "--name", f"bus-{i + 1}", "--nats", state.bus_url,
                *self.creds_args(state, role),
            )  # fmt: skip
            self.spawn(state, f"{role}-{i + 1}", state.ns("bus"), argv)

    async def prepare_bus(self, state: LabState) -> None:
        """Once JetStream can place them, create the buckets and the history with one copy per
        server (up to three) before anything else may create them with its own default."""
        copies = min(3, state.nats_servers)
        if not state.secure:  # (the probe's stream is no role's; kv() retries until placed)
            await embedded.wait_jetstream(state.host_urls, copies)
        bus = await self.connect(state, "lab")
        try:
            s = bus.subjects
            for bucket in s.buckets:
                if bucket == s.bucket_config:
                    continue
                await kv(bus, bucket, copies=copies)
            await kv(bus, s.bucket_config, history=10, copies=copies)
            await ensure_stream(bus, copies)
        finally:
            await bus.close()

    async def apply_and_wait(self, state: LabState, spec: ClusterSpec, timeout: float) -> None:
        """Apply the file, start membership and the nodes, and placement once every node is up:
        a placement that saw only some nodes up would start their groups away from home."""
        bus = await self.connect(state, "lab")
        try:
            await store(bus, spec)
            self.start_replicas(state, "membership")
            for node in state.nodes:
                self.start_node(state, node)
            await wait_for(
                bus,
                lambda v: {n.name for n in v.nodes if n.state == "up"} >= set(state.nodes),
                timeout,
                "every node up",
            )
            self.start_replicas(state, "placement")
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
                return await Bus.connect(
                    state.host_urls,
                    Subjects(),
                    service,
                    name="host",
                    credentials=self.credentials(state, "operator"),
                )
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

    def node_ns(self, state: LabState, node: str) -> str:
        if node not in state.nodes:
            raise LabError(f"unknown node {node!r}; the lab has {', '.join(state.nodes)}")
        return state.ns(node)

    def kill(self, node: str) -> list[int]:
        """A hard node loss: SIGKILL everything in the node's namespace, then its link down."""
        state = self.state()
        ns = self.node_ns(state, node)
        # Keepers first, so none of them restarts a process we kill next.
        killed = [p.pid for p in state.procs if p.ns == ns and p.kept and _ours(p)]
        for pid in killed:
            _signal(pid, signal.SIGKILL)
        killed = list(dict.fromkeys([*killed, *_sweep(ns)]))
        ip("link", "set", "eth0", "down", ns=ns)
        state.procs = [p for p in state.procs if p.ns != ns]
        if node in state.frozen:
            state.frozen.remove(node)  # nothing is left to thaw
        state.save()
        return killed

    def revive(self, node: str) -> None:
        state = self.state()
        ns = self.node_ns(state, node)
        if any(p.ns == ns for p in state.procs):
            raise LabError(f"node {node} is running; kill it first")
        ip("link", "set", "eth0", "up", ns=ns)
        self.start_node(state, node)

    def freeze(self, node: str) -> list[int]:
        """SIGSTOP every process in the node's namespace (its link stays up: the kernel still
        answers for it), until no new one appears (a child forked while we stopped the rest)."""
        state = self.state()
        ns = self.node_ns(state, node)
        stopped: list[int] = []
        deadline = time.monotonic() + 5
        while (new := [p for p in pids_in(ns) if p not in stopped]) and time.monotonic() < deadline:
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            stopped += new
        if node not in state.frozen:
            state.frozen.append(node)
        state.save()
        return stopped

    def thaw(self, node: str) -> list[int]:
        state = self.state()
        ns = self.node_ns(state, node)
        resumed = pids_in(ns)
        for pid in resumed:
            _signal(pid, signal.SIGCONT)
        if node in state.frozen:
            state.frozen.remove(node)
        state.save()
        return resumed

    def partition(self, node: str) -> None:
        """Cut the node off the network with everything running: its port on the lab's
        bridge goes down (the node sees its carrier drop, like a pulled cable)."""
        state = self.state()
        self.node_ns(state, node)
        ip("link", "set", node, "down", ns=state.ns("bus"))
        if node not in state.partitioned:
            state.partitioned.append(node)
        state.save()

    def heal(self, node: str) -> None:
        state = self.state()
        self.node_ns(state, node)
        ip("link", "set", node, "up", ns=state.ns("bus"))
        if node in state.partitioned:
            state.partitioned.remove(node)
        state.save()

    def kill_process(self, role: str, restart: bool = True) -> int:
        """SIGKILL one kept process (``membership-1``, ``nats-2``, ``n1-address``): its keeper
        starts it again after its backoff, or, with ``restart=False``, holds it down until
        ``start``. Returns the killed pid."""
        state = self.state()
        proc = self.kept_proc(state, role)
        if not restart:
            _signal(proc.pid, signal.SIGUSR1)
            self.wait_kept(role, lambda s: s.get("held") is True, "to hold it down")
        pid = self.kept_status(role).get("pid")
        if not isinstance(pid, int):
            raise LabError(f"{role} is not running (held down? 'vigil lab start {role}')")
        _signal(pid, signal.SIGKILL)
        return pid

    def start_process(self, role: str) -> int:
        """Let a held-down process run again (its keeper starts it now); returns its pid."""
        state = self.state()
        proc = self.kept_proc(state, role)
        _signal(proc.pid, signal.SIGUSR2)
        status = self.wait_kept(
            role, lambda s: s.get("held") is False and isinstance(s.get("pid"), int), "to start it"
        )
        pid = status["pid"]
        assert isinstance(pid, int)
        return pid

    def kept_proc(self, state: LabState, role: str) -> Proc:
        proc = state.proc(role)
        if proc is None or not proc.kept:
            roles = [p.role for p in state.procs if p.kept]
            raise LabError(f"unknown process {role!r}; the lab runs {', '.join(roles)}")
        if not _ours(proc):
            raise LabError(f"the keeper of {role} (pid {proc.pid}) is gone")
        return proc

    def wait_kept(
        self, role: str, ok: Callable[[dict[str, object]], bool], what: str, timeout: float = 5.0
    ) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while not ok(status := self.kept_status(role)):
            if time.monotonic() > deadline:
                raise LabError(f"the keeper of {role} did not answer within {timeout:g}s {what}")
            time.sleep(0.01)
        return status

    def info(self) -> dict[str, object]:
        """What ``vigil lab info -o json`` prints: doors, nodes and their fault state, and every
        kept process with its current pid."""
        state = self.state()
        running = {p.ns for p in state.procs}
        procs: dict[str, dict[str, object]] = {}
        for p in state.procs:
            if p.kept:
                status = self.kept_status(p.role)
                procs[p.role] = {
                    "ns": p.ns,
                    "pid": status.get("pid"),
                    "keeper": p.pid,
                    "restarts": status.get("restarts", 0),
                    "held": status.get("held", False),
                }
        nats = {
            f"nats-{i + 1}": {
                "url": url,
                "host_url": host,
                **{k: v for k, v in procs.get(f"nats-{i + 1}", {}).items() if k != "ns"},
            }
            for i, (url, host) in enumerate(zip(state.bus_urls, state.host_urls, strict=True))
        }
        b = self.bundle
        return {
            "prefix": state.prefix,
            "nats_url": state.host_url,
            "secure": state.secure,
            "ca": str(b.ca) if state.secure else None,
            "creds": {
                "operator": str(b.creds("operator")),
                "reader": str(b.creds("reader")),
                "nodes": {n: str(b.creds(f"node-{n}")) for n in state.nodes},
            }
            if state.secure
            else {},
            "nats_urls": state.host_urls,
            "nodes": state.nodes,
            "node_states": {
                n: {
                    "running": state.ns(n) in running,
                    "frozen": n in state.frozen,
                    "partitioned": n in state.partitioned,
                }
                for n in state.nodes
            },
            "nats": nats,
            "processes": procs,
            "namespaces": [state.ns(w) for w in ("bus", *state.nodes, "client")],
            "logs": str(self.dir),
        }

    # -- down ----------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every process and remove every namespace of this lab; safe to run twice."""
        state = LabState.load(self.prefix)
        ours = [n for n in namespaces() if n.startswith(f"{self.prefix}-")]
        # A recorded PID counts only if it still runs one of ours: after a crash and a reboot
        # the number may belong to someone else.
        recorded = [p for p in state.procs if _ours(p)] if state else []
        keepers = {p.pid for p in recorded if p.kept}
        pids = {p.pid for p in recorded}
        for ns in ours:
            pids.update(pids_in(ns))
        for pid in pids:  # a frozen process would not see its SIGTERM
            _signal(pid, signal.SIGCONT)
        # Keepers first: told to stop, they stop their child and restart nothing.
        for pid in [*keepers, *(pids - keepers)]:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        # A supervisor that saw its app die from our SIGTERM may have started it again before it
        # stopped itself: sweep the namespaces until nothing runs in them any more.
        for ns in ours:
            _sweep(ns)
        for ns in ours:
            ip("netns", "del", ns, check=False)
        (self.dir / "lab.json").unlink(missing_ok=True)
        return ours


def _sweep(ns: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL whatever runs in ``ns`` until nothing does; returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while (left := pids_in(ns)) and time.monotonic() < deadline:
        for pid in left:
            _signal(pid, signal.SIGKILL)
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.02)
    return killed


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
