"""Helpers for tests/e2e/test_behaviours.py (issue 4's behaviours, end to end in the lab).

Everything generic comes from the shared harness, ``vigil.testing`` (also used by the
benchmarks): the lab prefix and its teardown, waiting, processes, namespaces, the probe, and the
event recorder fed from the lab's stream on a thread of its own (``BusThread``).

What is new here: a lab with an event log and the ``vigil`` command line bound to it
(``BehLab``), connect-time measurements from the client namespace, a FAN client
(``vigil.client.ServiceClient``) run in the client namespace (``ServiceWatcher``), and a sampler
that catches an address held by two nodes at once (``AddressSampler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from vigil.cli import intents
from vigil.lab.lab import BUS_IP, NATS_PORT, Lab, LabState, lab_dir
from vigil.lab.netns import namespaces
from vigil.testing.events import BusThread, Recorder, Seen
from vigil.testing.labs import Prefix, lab_creds_args, lab_creds_env, lab_teardown
from vigil.testing.lines import JsonLines
from vigil.testing.netns import addresses, in_netns, netns_gate
from vigil.testing.probe import Probe
from vigil.testing.procs import alive, cmdline, process_group, run
from vigil.testing.waiting import wait_until
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import Event, ServiceUp

E = TypeVar("E", bound=Event)

VIGIL = str(Path(sys.executable).parent / "vigil")  # the console script of this environment


__all__ = [
    "VIGIL",
    "AddressSampler",
    "BehLab",
    "BusThread",
    "Prefix",
    "Probe",
    "Recorder",
    "Seen",
    "ServiceWatcher",
    "addresses",
    "alive",
    "behaviour_lab",
    "cmdline",
    "group_of",
    "in_netns",
    "latest",
    "process_group",
    "run",
    "settle",
    "wait_until",
]

PORT = 8080  # every app of these labs listens on its group's address, port 8080


def group_of(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in view["groups"] if g["name"] == name)


# -- a FAN client in the client namespace ---------------------------------------------------------
class ServiceWatcher:
    """``ServiceClient`` for ``service``, run in the client namespace; its reports collected."""

    def __init__(self, lab: BehLab, service: str, duration: float = 300.0) -> None:
        self.service = service
        self.stderr = (lab.tmp / f"watcher-{service}.err").open("w")
        creds = [f"{k}={v}" for k, v in lab_creds_env(lab.prefix.name, "reader").items()]
        argv = ["ip", "netns", "exec", lab.ns("client"), "env", *creds, sys.executable, "-m"]
        argv += ["vigil.testing.fanclient", f"nats://{BUS_IP}:{NATS_PORT}", service, str(duration)]
        self.lines: JsonLines[dict[str, Any]] = JsonLines(argv, dict, stderr=self.stderr)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.lines.snapshot() if r["kind"] == kind]

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        return wait_until(
            lambda: next(iter(self.of("ready")), None),
            timeout,
            f"the ServiceClient for {self.service} to start",
            interval=0.05,
        )

    def wait_event(self, timeout: float, **fields: Any) -> dict[str, Any]:
        """The first event record whose event has ``fields``."""

        def find() -> dict[str, Any] | None:
            return next(
                (
                    r
                    for r in self.of("event")
                    if all(r["event"].get(k) == v for k, v in fields.items())
                ),
                None,
            )

        return wait_until(find, timeout, f"the ServiceClient to see {fields}", interval=0.05)

    def wait_served_after(self, event: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """The GET the client made with the endpoint it got right after ``event``."""
        return wait_until(
            lambda: next(
                (
                    r
                    for r in self.of("served")
                    if r["after_seq"] == event["seq"] and r["after_source"] == event["source"]
                ),
                None,
            ),
            timeout,
            "the ServiceClient to try the endpoint it got after the event",
            interval=0.05,
        )

    def stop(self) -> None:
        self.lines.stop()
        self.stderr.close()


# -- "never on two nodes at once", sampled ---------------------------------------------------------
class AddressSampler:
    """Samples which of ``nodes`` hold ``vip``, over and over, until stopped. Each sample reads the
    nodes in the given order, one after the other: put the node that *acquires* first. Then a
    sample seeing the address on both is proof of an overlap (the acquiring node does not let go
    in between), and a sample seeing it on none is a moment without a holder."""

    def __init__(self, lab: BehLab, vip: str, nodes: list[str]) -> None:
        self.lab = lab
        self.vip = vip
        self.nodes = nodes
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded by design
        while not self.stopping.is_set() and time.monotonic() < deadline:
            held = tuple(n for n in self.nodes if self.vip in addresses(self.lab.ns(n)))
            self.samples.append((time.time(), held))
            time.sleep(0.005)

    def overlaps(self) -> list[tuple[float, tuple[str, ...]]]:
        return [s for s in self.samples if len(s[1]) > 1]

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


# -- the lab --------------------------------------------------------------------------------------
@dataclass
class BehLab:
    prefix: Any  # conftest.Prefix
    lab: Lab
    state: LabState
    spec: ClusterSpec
    events: Recorder
    bus: BusThread
    tmp: Path
    observers: list[Any] = field(default_factory=list)
    # where the events of the services' current placement begin: the last time ``settle`` had
    # to restart the groups behind them (0: they are as the lab started them)
    services_began: int = 0

    @property
    def url(self) -> str:
        return self.state.host_url

    @property
    def nodes(self) -> list[str]:
        return list(self.state.nodes)

    def ns(self, who: str) -> str:
        return self.state.ns(who)

    def vip(self, group: str) -> str:
        g = self.spec.group(group)
        assert g is not None
        return g.address.split("/")[0]

    # -- the operator's command line --------------------------------------------------------
    def vigil(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = run(
            [VIGIL, *args, "--nats", self.url, *lab_creds_args(self.prefix.name, "operator")]
        )
        if check:
            assert proc.returncode == 0, f"vigil {' '.join(args)}: {proc.stderr.strip()}"
        return proc

    def status(self) -> dict[str, Any]:
        view: dict[str, Any] = json.loads(self.vigil("status", "-o", "json").stdout)
        return view

    def group(self, name: str) -> dict[str, Any]:
        return group_of(self.status(), name)

    def wait_status(
        self, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        last: list[Any] = [None]

        def check() -> dict[str, Any] | None:
            view = self.status()
            last[0] = view
            return view if ok(view) else None

        deadline = time.monotonic() + timeout
        while True:
            view = check()
            if view is not None:
                return view
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g}s waiting for {what}; status: {last[0]}")
            time.sleep(0.05)

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
            return (
                g["node"] == node
                and g["mode"] == mode
                and (switching is None or g["switching"] == switching)
            )

        view = self.wait_status(ok, timeout, f"group {name} {mode} on {node}")
        return group_of(view, name)

    def wait_nodes(self, timeout: float = 20.0, **states: str) -> None:
        self.wait_status(
            lambda v: all(
                next(n["state"] for n in v["nodes"] if n["name"] == name) == state
                for name, state in states.items()
            ),
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
            return seen[0] == sorted(expected)

        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                pytest.fail(f"endpoints of {service}: {seen[0]}, expected {sorted(expected)}")
            time.sleep(0.1)

    def holders(self, vip: str) -> list[str]:
        return [n for n in self.nodes if vip in addresses(self.ns(n))]

    # -- clients in the client namespace ----------------------------------------------------
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
            time.sleep(0.01)
        return out

    def probe_once(self, vip: str, seconds: float = 0.5) -> list[dict[str, Any]]:
        """``vigil.lab.probe`` from the client namespace for ``seconds``: its JSON lines."""
        proc = run(
            [
                "ip",
                "netns",
                "exec",
                self.ns("client"),
                sys.executable,
                "-m",
                "vigil.lab.probe",
                "--target",
                f"{vip}:{PORT}",
                "--interval",
                "0.02",
                "--timeout",
                "0.2",
                "--duration",
                str(seconds),
            ]
        )
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def probe(self, vip: str) -> Any:
        probe = Probe(self.ns("client"), f"{vip}:{PORT}")
        self.observers.append(probe)
        return probe

    def watcher(self, service: str) -> ServiceWatcher:
        watcher = ServiceWatcher(self, service)
        self.observers.append(watcher)
        return watcher

    def sampler(self, vip: str, nodes: list[str]) -> AddressSampler:
        sampler = AddressSampler(self, vip, nodes)
        self.observers.append(sampler)
        return sampler

    def in_ns(self, who: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.ns(who), *argv])

    def close(self) -> None:
        for observer in self.observers:
            with contextlib.suppress(Exception):
                observer.stop()


def ts(seen: Seen) -> datetime:
    return seen.event.ts


def report(name: str, text: str) -> None:
    """A measured number, in the test output (``pytest -s`` or ``-rA`` shows it) and in the
    file ``/tmp/vigil-behaviours-measures.txt``, appended, for the docs."""
    line = f"[measured] {name}: {text}"
    print(line)
    with contextlib.suppress(OSError), open("/tmp/vigil-behaviours-measures.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


@contextlib.contextmanager
def behaviour_lab(
    request: pytest.FixtureRequest, spec_for: Callable[[Path], ClusterSpec]
) -> Iterator[BehLab]:
    """A lab of our own (prefix ``vbeh<random>``) built from ``spec_for(tmp)``, with an event log.
    Teardown always runs: observers stopped, ``Lab.down``, then nothing with the prefix may be
    left (namespace, process, state file; and the logs too unless a step failed)."""
    netns_gate()
    prefix = Prefix(f"vbeh{secrets.token_hex(2)}")
    assert not prefix.namespaces() and not lab_dir(prefix.name).exists(), f"{prefix.name} taken"
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix.name}-", dir="/tmp"))
    beh: BehLab | None = None
    bus: BusThread | None = None
    try:
        spec = spec_for(tmp)
        lab = Lab(prefix.name)
        state = lab.up(spec, nats_servers=1)  # one server: speed (test_lab_topology runs 3)
        prefix.note_pids()
        bus = BusThread(
            state.host_url, "e2e-behaviours", credentials=lab.credentials(state, "operator")
        )
        beh = BehLab(prefix, lab, state, spec, bus.recorder, bus, tmp)
        yield beh
    finally:
        if beh is not None:
            beh.close()
        if bus is not None:
            bus.close()
        failed = getattr(request.node, "_failed_step", None)
        lab_teardown(prefix, keep_logs=failed is not None)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not [n for n in namespaces() if n.startswith(f"{prefix.name}-")]
        assert prefix.name not in run(["ip", "netns", "list"]).stdout
        if failed is None:
            assert not lab_dir(prefix.name).exists(), f"{lab_dir(prefix.name)} left behind"
        else:
            print(f"\nlab {prefix.name}: logs kept in {lab_dir(prefix.name)} ({failed} failed)")


# -- back to the start: what lets each test of a class run alone, in any order --------------------
class Operated(Protocol):
    """A lab the operator's commands reach: ``BehLab`` and test_supervision's ``SupLab``."""

    lab: Lab
    events: Recorder
    bus: BusThread

    @property
    def url(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def vigil(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


def latest(events: Recorder, kind: type[E], **fields: Any) -> tuple[Seen, E]:
    """The newest recorded event of ``kind`` with ``fields``, like ``Recorder.wait`` (a lab
    serves many tests: the first one is history)."""
    found = events.select(kind, **fields)
    assert found, f"no {kind.__name__} {fields} recorded"
    event = found[-1].event
    assert isinstance(event, kind)
    return found[-1], event


def _read(lab: Operated, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
    last: list[Any] = [None]

    def check() -> bool:
        view = lab.status()
        last[0] = view
        return ok(view)

    wait_until(check, timeout, lambda: f"{what}; status: {last[0]}", interval=0.1)


def _home(g: dict[str, Any]) -> bool:
    return bool(
        g["node"] == g["preferred"] and g["mode"] == "normal" and g["switching"] == "enabled"
    )


def at_once(lab: Operated, verb: str, groups: list[str]) -> None:
    """``vigil VERB GROUP`` for every group at once: the operator's intents, written together
    through the lab's bus connection (CLI processes started side by side still land up to a
    second apart on a busy machine, and the first groups would serve before the last is even
    asked to run: not the lab's start these tests mean to reproduce)."""
    bus = lab.bus.bus
    assert bus is not None

    async def one(name: str) -> None:
        if verb == "enable":
            await intents.enable(bus, name)
        else:
            await intents.set_admin(bus, name, "halted" if verb == "halt" else "run")

    async def every() -> None:
        await asyncio.gather(*(one(name) for name in groups))

    lab.bus.call(every(), timeout=60)


def settle(lab: Operated, timeout: float = 60.0, cycle: list[str] | None = None) -> int:
    """Bring a lab back to its start: every node up, every group ``normal`` on its preferred node
    with switching enabled and its app serving. Dead nodes are revived; a group away from home
    is enabled (its bans forgotten); those and the groups named in ``cycle`` are halted
    together and run again together on their preferred nodes; then each of them has said
    ``service_up`` there. Returns the position of the events from which they run again (or the
    current position, when nothing was restarted)."""
    view: list[dict[str, Any]] = []

    def seen(v: dict[str, Any]) -> bool:
        view[:] = [v]
        return True

    _read(lab, seen, timeout, "a readable status")
    down = [n["name"] for n in view[0]["nodes"] if n["state"] != "up"]
    for node in down:
        lab.lab.revive(node)
    _read(lab, lambda v: all(n["state"] == "up" for n in v["nodes"]), timeout, "every node up")
    _read(lab, seen, timeout, "a readable status")
    astray = [g["name"] for g in view[0]["groups"] if not _home(g)]
    away = [*(cycle or []), *(n for n in astray if n not in (cycle or []))]
    mark = lab.events.mark()
    if away:
        # (not a group at home: enable gives a running group a new epoch, its app restarts)
        at_once(lab, "enable", astray)
        at_once(lab, "halt", away)
        _read(
            lab,
            lambda v: all(group_of(v, n)["node"] is None for n in away),
            timeout,
            f"{away} halted",
        )
        mark = lab.events.mark()
        at_once(lab, "run", away)  # as at the lab's start: placed together
        preferred = {g["name"]: g["preferred"] for g in view[0]["groups"]}
        for name in away:
            lab.events.wait(ServiceUp, timeout, mark, group=name, node=preferred[name])
    _read(lab, lambda v: all(_home(g) for g in v["groups"]), timeout, "every group home")
    return mark
