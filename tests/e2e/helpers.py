"""Helpers for tests/e2e/test_behaviours.py (issue 4's behaviours, end to end in the lab).

Everything generic is *reused*, not copied:

- from tests/e2e/conftest.py: ``Prefix``, ``lab_teardown``, ``wait_until``, ``addresses``,
  ``in_netns``, ``Probe``, ``run``, ``alive``, ``netns_gate`` (a conftest cannot be imported
  reliably by name, so the module already loaded by pytest is looked up by its path, or loaded
  from it under a private name);
- from tests/e2e/test_supervision.py: ``EventLog`` (an ordered JetStream consumer on ``vigil.>``
  replaying the stream from the start), ``Seen``, ``process_group``, ``cmdline``.

What is new here: a lab with an event log and the ``vigil`` command line bound to it
(``BehLab``), connect-time measurements from the client namespace, a FAN client
(``vigil.client.ServiceClient``) run in the client namespace (``ServiceWatcher``), and a sampler
that catches an address held by two nodes at once (``AddressSampler``).
"""

from __future__ import annotations

import contextlib
import importlib.util
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
from types import ModuleType
from typing import Any

import pytest

# tests/e2e is on sys.path (pytest's default "prepend" import mode, no __init__.py here)
from test_supervision import EventLog, Seen, cmdline, process_group

from vigil.lab.lab import BUS_IP, NATS_PORT, Lab, LabState, lab_dir
from vigil.lab.netns import namespaces
from vigil.wire.cluster import ClusterSpec


def _e2e_conftest() -> ModuleType:
    path = Path(__file__).with_name("conftest.py").resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    spec = importlib.util.spec_from_file_location("vigil_e2e_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_conftest = _e2e_conftest()
Prefix = _conftest.Prefix
Probe = _conftest.Probe
lab_teardown = _conftest.lab_teardown
wait_until = _conftest.wait_until
addresses = _conftest.addresses
in_netns = _conftest.in_netns
alive = _conftest.alive
run = _conftest.run
netns_gate = _conftest.netns_gate
VIGIL: str = _conftest.VIGIL

__all__ = [
    "VIGIL",
    "AddressSampler",
    "BehLab",
    "EventLog",
    "Prefix",
    "Probe",
    "Seen",
    "ServiceWatcher",
    "addresses",
    "alive",
    "behaviour_lab",
    "cmdline",
    "group_of",
    "in_netns",
    "process_group",
    "run",
    "wait_until",
]

PORT = 8080  # every app of these labs listens on its group's address, port 8080


def group_of(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in view["groups"] if g["name"] == name)


def misread(view: dict[str, Any]) -> bool:
    """``vigil status`` sometimes reads the placement bucket as empty (see
    test_failover.py::watch_placement): every epoch 0 is a misread, not a state."""
    return all(g["epoch"] == 0 for g in view["groups"])


# -- a FAN client in the client namespace ---------------------------------------------------------
# ``vigil.client.ServiceClient`` as an application would use it, in its own process in the client
# namespace, talking to the bus over the lab's bridge. Each event it handles is printed (one JSON
# line) together with what ``endpoint()`` returns *right after* it handled that event, and the
# endpoint is then tried with a real HTTP GET.
WATCHER_SCRIPT = r"""
import asyncio, json, sys, time
from vigil.client import ServiceClient

url, service, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])


def out(**record):
    print(json.dumps(record), flush=True)


def dump(endpoint):
    if endpoint is None:
        return None
    return {"group": endpoint.group, "node": endpoint.node, "address": endpoint.address}


async def get(address):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, 8080), 0.5)
        writer.write(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 0.5)
        writer.close()
        return data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"


class Watched(ServiceClient):
    async def _on_event(self, msg):
        received = time.time()
        await super()._on_event(msg)
        chosen = self.endpoint()  # what a caller gets right after this event
        handled = time.time()
        event = json.loads(msg.data)
        out(kind="event", received=received, handled=handled, event=event,
            endpoint=dump(chosen), endpoints=[dump(e) for e in self.endpoints()])
        if chosen is not None:
            asyncio.ensure_future(self.try_it(event, chosen))

    async def try_it(self, event, chosen):
        body = await get(chosen.address)
        out(kind="served", after_seq=event.get("seq"), after_source=event.get("source"),
            after_type=event.get("type"), endpoint=dump(chosen), body=body, t=time.time())


async def main():
    client = Watched([url], service)
    await client.start()
    out(kind="ready", endpoint=dump(client.endpoint()),
        endpoints=[dump(e) for e in client.endpoints()])
    try:
        await asyncio.sleep(duration)
    finally:
        await client.aclose()


asyncio.run(main())
"""


class ServiceWatcher:
    """``ServiceClient`` for ``service``, run in the client namespace; its reports collected."""

    def __init__(self, lab: BehLab, service: str, duration: float = 300.0) -> None:
        self.service = service
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stderr = (lab.tmp / f"watcher-{service}.err").open("w")
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.ns("client"),
                sys.executable,
                "-c",
                WATCHER_SCRIPT,
                f"nats://{BUS_IP}:{NATS_PORT}",
                service,
                str(duration),
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                with self.lock:
                    self.records.append(record)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if r["kind"] == kind]

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.reader.join(timeout=5)
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
    events: EventLog
    tmp: Path
    story: dict[str, Any] = field(default_factory=dict)
    observers: list[Any] = field(default_factory=list)

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
        proc = run([VIGIL, *args, "--nats", self.url])
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
            return view if not misread(view) and ok(view) else None

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
        """Group ``name`` keeps ``node`` and ``epoch`` in every readable status sample for
        ``seconds``; returns how many samples were read."""
        readable = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end or readable < 2:
            view = self.status()
            if misread(view):
                continue
            g = group_of(view, name)
            assert (g["node"], g["epoch"]) == (node, epoch), f"{name} moved: {g}"
            readable += 1
        return readable

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
        probe = Probe(self.prefix.name, f"{vip}:{PORT}")
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
    events: EventLog | None = None
    try:
        spec = spec_for(tmp)
        lab = Lab(prefix.name)
        state = lab.up(spec, nats_servers=1)  # one server: speed (test_lab_topology runs 3)
        prefix.note_pids()
        events = EventLog(state.host_url)
        beh = BehLab(prefix, lab, state, spec, events, tmp)
        yield beh
    finally:
        if beh is not None:
            beh.close()
        if events is not None:
            events.close()
        failed = getattr(request.node, "_failed_step", None)
        lab_teardown(prefix, keep_logs=failed is not None)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not [n for n in namespaces() if n.startswith(f"{prefix.name}-")]
        assert prefix.name not in run(["ip", "netns", "list"]).stdout
        if failed is None:
            assert not lab_dir(prefix.name).exists(), f"{lab_dir(prefix.name)} left behind"
        else:
            print(f"\nlab {prefix.name}: logs kept in {lab_dir(prefix.name)} ({failed} failed)")
