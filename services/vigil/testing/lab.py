"""One driver for a running lab (``vigil lab``), shared by every end-to-end test.

``LabDriver`` owns a fresh prefix and whatever runs under it: it brings the lab up (the ``Lab``
API, or the command line), runs ``vigil`` commands against it with the lab's credentials, reads
``vigil status`` and waits on it with deadlines, looks at the nodes' namespaces, injects faults
(kill, revive, freeze, thaw), starts observers (probe, ARP watch, nft monitor, FAN client,
address sampler) and records the lab's events. ``driven_lab`` is its lifetime: teardown always
runs, resumes anything frozen, runs ``Lab.down`` and then *asserts* nothing of the lab is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from vigil.cli import intents
from vigil.core.clusterconfig import store
from vigil.core.credentials import Credentials
from vigil.lab.lab import BUS_IP, NATS_PORT, Lab, LabState, lab_dir
from vigil.lab.netns import pids_in
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import Event, ServiceUp

from .events import BusThread, Recorder, Seen
from .netns import addresses, in_netns, netns_gate
from .observers import AddressSampler, ArpWatch, NftMonitor, ServiceWatcher
from .probe import Probe
from .procs import alive, cmdline, run, signal_all
from .waiting import wait_until

E = TypeVar("E", bound=Event)

VIGIL = str(Path(sys.executable).parent / "vigil")  # the console script of this environment
PORT = 8080  # the labs' apps listen on their group's address, port 8080


class Stoppable(Protocol):
    def stop(self) -> None: ...


# -- a prefix of our own, and the proof that nothing of it is left -----------------------------
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
        assert not lab_dir(prefix.name).exists(), f"{lab_dir(prefix.name)} left behind"


# -- status views -------------------------------------------------------------------------------
def group_of(view: dict[str, Any], name: str) -> dict[str, Any]:
    """Group ``name`` of a status view (``{}`` when the view has no such group)."""
    return next((g for g in view.get("groups", []) if g["name"] == name), {})


def node_state(view: dict[str, Any], node: str) -> str | None:
    return next((n["state"] for n in view.get("nodes", []) if n["name"] == node), None)


def _home(g: dict[str, Any]) -> bool:
    return bool(
        g["node"] == g["preferred"] and g["mode"] == "normal" and g["switching"] == "enabled"
    )


def latest(events: Recorder, kind: type[E], **fields: Any) -> tuple[Seen, E]:
    """The newest recorded event of ``kind`` with ``fields``, like ``Recorder.wait`` (a lab
    serves many tests: the first one is history)."""
    found = events.select(kind, **fields)
    assert found, f"no {kind.__name__} {fields} recorded"
    event = found[-1].event
    assert isinstance(event, kind)
    return found[-1], event


# -- the driver ---------------------------------------------------------------------------------
@dataclass
class LabDriver:
    prefix: Prefix
    tmp: Path  # a scratch directory of the lab's own (app files, logs of observers), removed
    lab: Lab = field(init=False)
    spec: ClusterSpec | None = None  # the cluster file, when the lab was built from one
    observers: list[Stoppable] = field(default_factory=list)
    # where the events of the services' current placement begin: the last time ``settle`` had
    # to restart the groups behind them (0: they are as the lab started them)
    services_began: int = 0
    _bus: BusThread | None = None

    def __post_init__(self) -> None:
        self.lab = Lab(self.prefix.name)

    # -- up -------------------------------------------------------------------------------------
    def up(self, spec: ClusterSpec, nats_servers: int = 1) -> LabState:
        """Build the lab from ``spec`` with the ``Lab`` API (one NATS server by default: speed;
        test_lab_topology runs three)."""
        self.spec = spec
        state = self.lab.up(spec, nats_servers=nats_servers)
        self.prefix.note_pids()
        return state

    def up_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``vigil lab --prefix P up ARGS``, the operator's way; asserts it succeeded."""
        proc = self.lab_cli("up", *args, check=False, timeout=timeout)
        self.prefix.note_pids()
        assert proc.returncode == 0, f"vigil lab up failed: {proc.stderr.strip()}"
        return proc

    def record_events(self, name: str) -> Recorder:
        """Record the lab's events from now on (the stream holds them from the start)."""
        self._bus = BusThread(self.url, name, credentials=self.credentials("operator"))
        return self._bus.recorder

    # -- what it is ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.prefix.name

    @property
    def state(self) -> LabState:
        return self.lab.state()

    @property
    def url(self) -> str:
        return self.state.host_url

    @property
    def urls(self) -> str:
        """Every door, comma-separated (any one server may be down)."""
        return ",".join(self.state.host_urls)

    @property
    def nodes(self) -> list[str]:
        return list(self.state.nodes)

    def ns(self, who: str) -> str:
        return self.prefix.ns(who)

    def vip(self, group: str) -> str:
        assert self.spec is not None, "the lab was not built from a cluster file"
        g = self.spec.group(group)
        assert g is not None
        return g.address.split("/")[0]

    @property
    def lease(self) -> float:
        """The cluster file's lease, seconds."""
        assert self.spec is not None, "the lab was not built from a cluster file"
        return self.spec.cluster.timing.lease

    @property
    def bus(self) -> BusThread:
        assert self._bus is not None, "no event recorder: record_events() first"
        return self._bus

    @property
    def events(self) -> Recorder:
        return self.bus.recorder

    def credentials(self, role: str) -> Credentials:
        return lab_credentials(self.name, role)

    # -- command lines -------------------------------------------------------------------------
    def lab_cli(
        self, *args: str, check: bool = True, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """``vigil lab --prefix P ARGS``."""
        proc = run([VIGIL, "lab", "--prefix", self.name, *args], timeout=timeout)
        if check:
            assert proc.returncode == 0, f"vigil lab {' '.join(args)}: {proc.stderr.strip()}"
        return proc

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.lab_cli("info", "-o", "json").stdout)
        return out

    def vigil(
        self, *args: str, check: bool = True, role: str = "operator"
    ) -> subprocess.CompletedProcess[str]:
        """``vigil ARGS`` against the lab's first door, as ``role``."""
        proc = run([VIGIL, *args, "--nats", self.url, *lab_creds_args(self.name, role)])
        if check:
            assert proc.returncode == 0, f"vigil {' '.join(args)}: {proc.stderr.strip()}"
        return proc

    def logs(self, group: str, node: str | None = None) -> str:
        """``vigil logs GROUP`` (the last 1000 lines), of ``node`` or where the group runs."""
        where = ["--node", node] if node else []
        return self.vigil("logs", group, "-n", "1000", *where).stdout

    def apply(self, spec: ClusterSpec) -> int:
        """Store a new cluster file through the recorder's bus connection."""
        assert self.bus.bus is not None
        revision = self.bus.call(store(self.bus.bus, spec))
        self.spec = spec
        return revision

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``vigil status -o json`` as the reader; a failed read fails the test."""
        creds = lab_creds_args(self.name, "reader")
        proc = run([VIGIL, "status", "-o", "json", "--nats", self.url, *creds])
        assert proc.returncode == 0, f"vigil status failed: {proc.stderr.strip()}"
        view: dict[str, Any] = json.loads(proc.stdout)
        return view

    def status_any_door(self) -> dict[str, Any]:
        """``vigil status -o json`` through every door; ``{}`` when it fails (a server down,
        JetStream electing leaders)."""
        creds = lab_creds_args(self.name, "reader")
        proc = run([VIGIL, "status", "-o", "json", "--nats", self.urls, *creds])
        view: dict[str, Any] = json.loads(proc.stdout) if proc.returncode == 0 else {}
        return view

    def group(self, name: str) -> dict[str, Any]:
        return group_of(self.status(), name)

    def wait_status(
        self,
        ok: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        interval: float = 0.05,
    ) -> dict[str, Any]:
        """The first status view for which ``ok`` holds; at the deadline the test fails with
        the last view read."""
        last: list[Any] = [None]

        def check() -> dict[str, Any] | None:
            view = self.status()
            last[0] = view
            return view if ok(view) else None

        return wait_until(check, timeout, lambda: f"{what}; status: {last[0]}", interval=interval)

    def wait_group(
        self,
        name: str,
        node: str | None,
        mode: str,
        timeout: float = 20.0,
        switching: str | None = None,
    ) -> dict[str, Any]:
        def ok(view: dict[str, Any]) -> bool:
            g = group_of(view, name)
            return bool(
                g
                and g["node"] == node
                and g["mode"] == mode
                and (switching is None or g["switching"] == switching)
            )

        view = self.wait_status(ok, timeout, f"group {name} {mode} on {node}")
        return group_of(view, name)

    def wait_nodes(self, timeout: float = 20.0, **states: str) -> None:
        self.wait_status(
            lambda v: all(node_state(v, name) == state for name, state in states.items()),
            timeout,
            f"nodes {states}",
        )

    def stays(self, name: str, node: str | None, epoch: int, seconds: float) -> int:
        """Group ``name`` keeps ``node`` and ``epoch`` in every status sample for ``seconds``
        (a read that fails fails the test: ``vigil status`` never reports a failed read as an
        empty cluster); returns how many samples were read."""
        samples = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end or samples < 2:
            g = group_of(self.status(), name)
            assert (g["node"], g["epoch"]) == (node, epoch), f"{name} moved: {g}"
            samples += 1
        return samples

    def endpoints(self, service: str) -> list[tuple[str, str, str]]:
        out = json.loads(self.vigil("endpoints", service, "-o", "json").stdout)
        return sorted((e["group"], e["node"], e["address"]) for e in out)

    def wait_endpoints(
        self, service: str, expected: list[tuple[str, str, str]], timeout: float = 15.0
    ) -> None:
        seen: list[Any] = [None]

        def ok() -> bool:
            seen[0] = self.endpoints(service)
            return bool(seen[0] == sorted(expected))

        wait_until(
            ok,
            timeout,
            lambda: f"endpoints of {service}: {seen[0]}, expected {sorted(expected)}",
            interval=0.1,
        )

    # -- the nodes' namespaces -----------------------------------------------------------------
    def holders(self, address: str, nodes: Iterable[str] | None = None) -> list[str]:
        """Which of ``nodes`` (default: all) have ``address`` on their interface."""
        return [n for n in (self.nodes if nodes is None else nodes) if address in self.addr(n)]

    def addr(self, who: str) -> set[str]:
        return addresses(self.ns(who))

    def in_ns(
        self, who: str, *argv: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.ns(who), *argv], timeout=timeout)

    def node_pids(self, node: str, needle: str) -> list[int]:
        """The processes in ``node``'s namespace whose command line has ``needle``."""
        return [p for p in pids_in(self.ns(node)) if needle in cmdline(p)]

    def kill_pid(self, node: str, pid: int) -> None:
        """SIGKILL one process (an app) from inside the node's namespace."""
        proc = self.in_ns(node, "kill", "-KILL", str(pid), timeout=10)
        assert proc.returncode == 0, f"kill -KILL {pid} in {node}: {proc.stderr.strip()}"

    # -- faults ----------------------------------------------------------------------------------
    def kill(self, node: str) -> list[int]:
        """A hard node loss: everything of the node SIGKILLed, its link down."""
        self.prefix.note_pids()
        return self.lab.kill(node)

    def revive(self, node: str) -> None:
        self.lab.revive(node)
        self.prefix.note_pids()

    def freeze(self, node: str) -> list[int]:
        """SIGSTOP every process of the node, its link left up (the teardown resumes them)."""
        stopped = self.lab.freeze(node)
        self.prefix.pids.update(stopped)
        return stopped

    def thaw(self, node: str, pids: Iterable[int] = ()) -> None:
        """SIGCONT every process of the node, and ``pids`` (those ``freeze`` stopped)."""
        resumed = self.lab.thaw(node)
        signal_all(sorted(set(pids) - set(resumed)), signal.SIGCONT)

    # -- clients and observers in the lab ------------------------------------------------------
    def _watch(self, observer: Any) -> Any:
        self.observers.append(observer)
        return observer

    def probe(self, target: str) -> Probe:
        """The real TCP client in the client namespace, on ``host:port`` (port 8080 if none)."""
        where = target if ":" in target else f"{target}:{PORT}"
        probe: Probe = self._watch(Probe(self.ns("client"), where))
        return probe

    def probe_once(self, vip: str, seconds: float = 0.5) -> list[dict[str, Any]]:
        """``vigil.lab.probe`` from the client namespace for ``seconds``: its JSON lines."""
        argv = [sys.executable, "-m", "vigil.lab.probe", "--target", f"{vip}:{PORT}"]
        argv += ["--interval", "0.02", "--timeout", "0.2", "--duration", str(seconds)]
        proc = self.in_ns("client", *argv)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def connect_times(
        self, vip: str, port: int = PORT, count: int = 20, timeout: float = 1.0
    ) -> list[tuple[float, str]]:
        """``count`` TCP connects from the client namespace: (seconds, outcome) each, outcome
        ``refused``, ``connected``, ``timeout`` or an errno text."""
        out = []
        for _ in range(count):
            with in_netns(self.ns("client")):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(timeout)
                began = time.perf_counter()
                try:
                    sock.connect((vip, port))
                    outcome = "connected"
                except ConnectionRefusedError:
                    outcome = "refused"
                except TimeoutError:
                    outcome = "timeout"
                except OSError as exc:
                    outcome = exc.strerror or str(exc)
                out.append((time.perf_counter() - began, outcome))
            time.sleep(0.01)  # pacing between attempts, not synchronisation
        return out

    def curl(self, url: str) -> str | None:
        """One GET from the client namespace with curl: the body, or None."""
        proc = self.in_ns("client", "curl", "-sS", "--noproxy", "*", "--max-time", "2", url)
        return proc.stdout if proc.returncode == 0 else None

    def served(self, url: str, body: str, timeout: float = 15.0) -> None:
        """Until a GET of ``url`` from the client answers ``body``."""
        seen: list[str | None] = [None]

        def ok() -> bool:
            seen[0] = self.curl(url)
            return seen[0] == body

        wait_until(
            ok,
            timeout,
            lambda: f"curl {url} from the client to answer {body!r} (last: {seen[0]!r})",
        )

    def arp_watch(self, vip: str) -> ArpWatch:
        watch: ArpWatch = self._watch(ArpWatch(self.ns("client"), vip))
        return watch

    def nft_monitor(self, node: str) -> NftMonitor:
        monitor: NftMonitor = self._watch(NftMonitor(self.ns(node)))
        monitor.wait_listening()
        return monitor

    def watcher(self, service: str) -> ServiceWatcher:
        """A FAN client (``vigil.client.ServiceClient``) for ``service`` in the client namespace."""
        env = lab_creds_env(self.name, "reader")
        stderr = self.tmp / f"watcher-{service}.err"
        url = f"nats://{BUS_IP}:{NATS_PORT}"
        watcher: ServiceWatcher = self._watch(
            ServiceWatcher(self.ns("client"), url, service, env, stderr)
        )
        return watcher

    def sampler(self, vip: str, nodes: list[str]) -> AddressSampler:
        """Which of ``nodes`` hold ``vip``, sampled in that order (the acquiring node first)."""
        sampler: AddressSampler = self._watch(AddressSampler(vip, {n: self.ns(n) for n in nodes}))
        return sampler

    @contextlib.contextmanager
    def scoped_observers(self) -> Iterator[None]:
        """Observers started inside are stopped on the way out (one test's clients)."""
        before = len(self.observers)
        try:
            yield
        finally:
            for observer in self.observers[before:]:
                observer.stop()
            del self.observers[before:]

    # -- back to the start: what lets each test of a class run alone, in any order -------------
    def at_once(self, verb: str, groups: list[str]) -> None:
        """``vigil VERB GROUP`` for every group at once: the operator's intents, written
        together through the recorder's bus connection (CLI processes started side by side
        still land up to a second apart on a busy machine, and the first groups would serve
        before the last is even asked to run: not the lab's start these tests reproduce)."""
        bus = self.bus.bus
        assert bus is not None

        async def one(name: str) -> None:
            if verb == "enable":
                await intents.enable(bus, name)
            else:
                await intents.set_admin(bus, name, "halted" if verb == "halt" else "run")

        async def every() -> None:
            await asyncio.gather(*(one(name) for name in groups))

        self.bus.call(every(), timeout=60)

    def settle(self, timeout: float = 60.0, cycle: list[str] | None = None) -> int:
        """Bring the lab back to its start: every node up, every group ``normal`` on its
        preferred node with switching enabled and its app serving. Dead nodes are revived; a
        group away from home is enabled (its bans forgotten); those and the groups named in
        ``cycle`` are halted together and run again together on their preferred nodes; then
        each of them has said ``service_up`` there. Returns the position of the events from
        which they run again (or the current position, when nothing was restarted)."""
        view = self.wait_status(lambda v: True, timeout, "a readable status", interval=0.1)
        for node in [n["name"] for n in view["nodes"] if n["state"] != "up"]:
            self.revive(node)
        self.wait_status(
            lambda v: all(n["state"] == "up" for n in v["nodes"]),
            timeout,
            "every node up",
            interval=0.1,
        )
        view = self.wait_status(lambda v: True, timeout, "a readable status", interval=0.1)
        astray = [g["name"] for g in view["groups"] if not _home(g)]
        away = [*(cycle or []), *(n for n in astray if n not in (cycle or []))]
        mark = self.events.mark()
        if away:
            # (not a group at home: enable gives a running group a new epoch, its app restarts)
            self.at_once("enable", astray)
            self.at_once("halt", away)
            self.wait_status(
                lambda v: all(group_of(v, n)["node"] is None for n in away),
                timeout,
                f"{away} halted",
                interval=0.1,
            )
            mark = self.events.mark()
            self.at_once("run", away)  # as at the lab's start: placed together
            preferred = {g["name"]: g["preferred"] for g in view["groups"]}
            for name in away:
                self.events.wait(ServiceUp, timeout, mark, group=name, node=preferred[name])
        self.wait_status(
            lambda v: all(_home(g) for g in v["groups"]), timeout, "every group home", interval=0.1
        )
        return mark

    # -- down --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every observer and the event recorder (the lab itself stays up)."""
        for observer in self.observers:
            with contextlib.suppress(Exception):
                observer.stop()
        self.observers.clear()
        if self._bus is not None:
            self._bus.close()
            self._bus = None


@contextlib.contextmanager
def driven_lab(
    stem: str,
    failed: Callable[[], str | None] = lambda: None,
    tools: tuple[str, ...] = ("ip", "nft"),
) -> Iterator[LabDriver]:
    """A driver on a fresh prefix ``<stem><random>`` (no lab up yet: ``up`` or ``up_cli``).
    ``tools`` are what the lab needs on this machine (the netns gate skips, or fails in CI,
    without them). Teardown always runs: observers stopped, ``Lab.down``, then nothing with the
    prefix may be left (namespace, process, state file; and the logs and scratch directory too
    unless ``failed()`` names a failed step or ``VIGIL_KEEP_LAB_DIR`` is set)."""
    netns_gate(tools)
    prefix = Prefix(f"{stem}{secrets.token_hex(3)}")
    assert not prefix.namespaces() and not lab_dir(prefix.name).exists(), f"{prefix.name} taken"
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix.name}-", dir="/tmp"))
    driver = LabDriver(prefix, tmp)
    try:
        yield driver
    finally:
        driver.close()
        why = failed()
        keep = why is not None or bool(os.environ.get("VIGIL_KEEP_LAB_DIR"))
        lab_teardown(prefix, keep_logs=keep)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        if why is not None:
            print(f"\nlab {prefix.name}: logs kept in {lab_dir(prefix.name)} and {tmp} ({why})")
