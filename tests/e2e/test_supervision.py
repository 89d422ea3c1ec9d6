"""Application supervision end to end (issue 3): real servers, real clients, through the VIP.

One lab of our own (prefix ``vsup<random>``, three nodes) runs four groups at once:

| group    | app                                             | nodes      | monitors              |
|----------|-------------------------------------------------|------------|-----------------------|
| web      | nginx, config rendered by ``before_start``      | n1 -> n2   | http                  |
| kv       | redis-server as user ``redis``                  | n2 -> n3   | tcp 6379, exec ping   |
| stubborn | tests/e2e/apps/httpapp.py, ignores SIGTERM      | n3 -> n1   | http                  |
| flaky    | tests/e2e/apps/httpapp.py                       | n1 -> n2   | exec (flag file), http|

The tests (each runs alone, in any order: the ``sup`` fixture first brings the lab back to its
start, its first cluster file with every group normal on its preferred node, and each test makes
its own preconditions):

1. curl reaches nginx and redis-cli reaches redis through their VIPs from the client namespace;
   redis really runs as user ``redis``.
2. The events show each run method in order: address acquired -> app started -> monitors
   started -> service up (same group, node and epoch).
3. A halt (the operator moves ``stubborn`` off n3 by applying a new cluster file) runs the halt
   method in the exact reverse order; the app ignores SIGTERM, so it is SIGKILLed (with its child)
   after ``stop_timeout``; then the group runs on n1.
4. SIGKILL nginx: restarted on the same node, served again. Keep killing it: after
   ``restart.max`` restarts it fails for good and moves to n2.
5. A monitor failure (a flag file makes the exec monitor fail) restarts the app.
6. ``vigil logs`` shows the app's output, once more after each restart.
7. A group removed from the cluster file is halted and its address released.

Events are read from the lab's bus with nats-py: an ordered JetStream consumer on ``vigil.>``
(the event stream), so the run methods of the first start, before the test connected, are seen.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigil.core.config import load_data
from vigil.testing.events import Recorder, Seen
from vigil.testing.lab import LabDriver, driven_lab, latest
from vigil.testing.procs import alive, cmdline, process_group
from vigil.testing.waiting import wait_until as until
from vigil.wire.cluster import ClusterSpec
from vigil.wire.events import (
    AddressAcquired,
    AddressReleased,
    AppFailed,
    AppStarted,
    AppStopFailed,
    AppStopped,
    Event,
    MonitorsStarted,
    MonitorsStopped,
    PlacementDecided,
    ServiceDown,
    ServiceUp,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

E = TypeVar("E", bound=Event)

VIGIL = str(Path(sys.executable).parent / "vigil")
APPS = Path(__file__).resolve().parent / "apps"
HTTP_APP = APPS / "httpapp.py"
NGINX_TEMPLATE = APPS / "nginx.conf.in"

NODES = ["n1", "n2", "n3"]
WEB_VIP, KV_VIP, STUBBORN_VIP, FLAKY_VIP = (f"10.213.0.{i}" for i in (101, 102, 103, 104))
APP_PORT = 8080
STOP_TIMEOUT = 1.0  # stubborn's stop_timeout, seconds
RESTART_MAX = 2  # web's restart.max
STEP_DEADLINE = 15.0  # seconds for one supervision step (restart, failover, halt) to show


# -- the cluster file -----------------------------------------------------------------------------
def cluster_spec(
    base: Path, *, stubborn: tuple[str, list[str]] = ("n3", ["n1"]), with_kv: bool = True
) -> ClusterSpec:
    """The lab's cluster file. ``base`` holds one directory per node (``${VIGIL_NODE}``, which
    Vigil substitutes before it runs anything): nginx's config, html, pid and temp files, redis's
    dir and the flag file of flaky's monitor."""
    node_dir = f"{base}/${{VIGIL_NODE}}"
    nginx_dir = f"{node_dir}/nginx"
    render = (
        f"mkdir -p {nginx_dir}/html"
        f' && sed -e "s|@ADDR@|${{VIGIL_ADDRESS}}|g" -e "s|@DIR@|{nginx_dir}|g"'
        f" {NGINX_TEMPLATE} > {nginx_dir}/nginx.conf"
        f' && echo "nginx on ${{VIGIL_NODE}}" > {nginx_dir}/html/index.html'
    )
    groups: list[dict[str, Any]] = [
        {
            "name": "web",
            "address": f"{WEB_VIP}/24",
            "preferred": "n1",
            "possible": ["n2"],
            "app": {
                "before_start": f"sh -c '{render}'",
                "command": (
                    f"nginx -p {nginx_dir} -c {nginx_dir}/nginx.conf"
                    f' -g "daemon off; pid {nginx_dir}/nginx.pid;"'
                ),
                "workdir": str(base),
                "start_timeout": "10s",
                "stop_timeout": "3s",
            },
            "monitors": [
                {"http": "http://${VIGIL_ADDRESS}/", "interval": "300ms", "failures": 2},
            ],
            "restart": {"max": RESTART_MAX, "window": "60s", "backoff": "100ms"},
        },
        {
            "name": "kv",
            "address": f"{KV_VIP}/24",
            "preferred": "n2",
            "possible": ["n3"],
            "app": {
                "command": (
                    "redis-server --bind ${VIGIL_ADDRESS} --port 6379 --protected-mode no"
                    f" --save '' --appendonly no --dir {node_dir}/redis"
                ),
                "user": "redis",
                "start_timeout": "10s",
                "stop_timeout": "3s",
            },
            "monitors": [
                {"tcp": 6379, "interval": "500ms"},
                {"exec": "redis-cli -h ${VIGIL_ADDRESS} ping", "interval": "500ms"},
            ],
        },
        {
            "name": "stubborn",
            "address": f"{STUBBORN_VIP}/24",
            "preferred": stubborn[0],
            "possible": stubborn[1],
            "app": {
                "command": (
                    f"python3 {HTTP_APP} --name stubborn --bind ${{VIGIL_ADDRESS}}"
                    f" --port {APP_PORT} --ignore-term"
                ),
                "stop_timeout": f"{int(STOP_TIMEOUT * 1000)}ms",
            },
            "monitors": [{"http": f"http://${{VIGIL_ADDRESS}}:{APP_PORT}/", "interval": "500ms"}],
        },
        {
            "name": "flaky",
            "address": f"{FLAKY_VIP}/24",
            "preferred": "n1",
            "possible": ["n2"],
            "app": {
                "command": (
                    f"python3 {HTTP_APP} --name flaky --bind ${{VIGIL_ADDRESS}} --port {APP_PORT}"
                ),
                "start_timeout": "20s",
            },
            "monitors": [
                {"exec": f"test ! -e {node_dir}/fail.flag", "interval": "200ms", "failures": 2},
                {"http": f"http://${{VIGIL_ADDRESS}}:{APP_PORT}/", "interval": "500ms"},
            ],
        },
    ]
    if not with_kv:
        groups = [g for g in groups if g["name"] != "kv"]
    return load_data(
        {
            "cluster": {"name": "vsup", "timing": {"heartbeat": "250ms", "lease": "2s"}},
            "nodes": [{"name": n} for n in NODES],
            "groups": groups,
        }
    )


# -- the lab --------------------------------------------------------------------------------------
def netns_gate_tools() -> tuple[str, ...]:
    """What the gate needs: the real apps this story runs."""
    return ("ip", "nft", "nginx", "redis-server", "redis-cli", "curl")


def redis(sup: LabDriver, *args: str) -> subprocess.CompletedProcess[str]:
    """redis-cli from the client namespace, on kv's address."""
    return sup.in_ns("client", "redis-cli", "-h", KV_VIP, "-p", "6379", *args)


@pytest.fixture(scope="class")
def sup_lab(request: pytest.FixtureRequest) -> Iterator[LabDriver]:
    """The lab (prefix ``vsup<random>``); its scratch directory holds one directory per node."""

    def failed() -> str | None:
        return getattr(request.node, "_failed_step", None)

    with driven_lab("vsup", failed=failed, tools=netns_gate_tools()) as sup:
        sup.tmp.chmod(0o755)  # nginx's workers (nobody) read the html under it
        redis_user = pwd.getpwnam("redis")
        for node in NODES:
            (sup.tmp / node).mkdir(mode=0o755)
            (sup.tmp / node / "redis").mkdir(mode=0o700)
            os.chown(sup.tmp / node / "redis", redis_user.pw_uid, redis_user.pw_gid)
        sup.up(cluster_spec(sup.tmp))
        sup.record_events("e2e-supervision")
        yield sup


@pytest.fixture
def sup(sup_lab: LabDriver) -> LabDriver:
    """The lab as it started, whatever the test before did: its first cluster file, every node
    up, every group normal on its preferred node and serving (``settle``)."""
    first = cluster_spec(sup_lab.tmp)
    now = sup_lab.spec
    assert now is not None
    if now != first:
        mark = sup_lab.events.mark()
        back = [g for g in first.groups if now.group(g.name) is None]
        sup_lab.apply(first)
        for g in back:
            sup_lab.events.wait(ServiceUp, 60, mark, group=g.name, node=g.preferred)
    sup_lab.settle()
    return sup_lab


# -- checks -----------------------------------------------------------------------------------
def ts(seen: Seen) -> datetime:
    return seen.event.ts


def assert_in_order(steps: list[Seen], what: str) -> None:
    """Delivered in this order, stamped in this order, and in sequence per source."""
    names = [f"{s.event.__class__.__name__}@{s.event.source}" for s in steps]
    indices = [s.index for s in steps]
    assert indices == sorted(indices), f"{what}: delivered out of order: {names} at {indices}"
    stamps = [ts(s) for s in steps]
    stamped = list(zip(names, stamps, strict=True))
    assert stamps == sorted(stamps), f"{what}: stamped out of order: {stamped}"
    by_source: dict[str, list[int]] = {}
    for s in steps:
        by_source.setdefault(s.event.source, []).append(s.event.seq)
    for source, seqs in by_source.items():
        assert seqs == sorted(seqs), f"{what}: {source} sequence out of order: {seqs}"


def run_method(
    events: Recorder, group: str, node: str, since: int = 0, timeout: float = STEP_DEADLINE
) -> list[Seen]:
    """The four steps of a run method of ``group`` on ``node`` (from position ``since``),
    asserted in order with one epoch."""
    acquired, a = events.wait(AddressAcquired, timeout, since, group=group, node=node)
    started, s = events.wait(AppStarted, timeout, acquired.index, group=group, node=node)
    monitors, m = events.wait(MonitorsStarted, timeout, started.index, group=group, node=node)
    up, u = events.wait(ServiceUp, timeout, monitors.index, group=group, node=node)
    steps = [acquired, started, monitors, up]
    assert a.epoch == s.epoch == m.epoch == u.epoch, (
        f"{group}: run method on {node} spans epochs: {[x.event for x in steps]}"
    )
    assert a.address == u.address
    # nothing of a halt or a failure in between
    between = [
        x
        for x in events.select(
            (AppFailed, AppStopped, MonitorsStopped, AddressReleased, ServiceDown),
            acquired.index,
            group=group,
            node=node,
        )
        if x.index < up.index
    ]
    assert not between, f"{group}: the run method on {node} was interrupted: {between}"
    assert_in_order(steps, f"{group} run method on {node}")
    return steps


# -- the story ------------------------------------------------------------------------------------
class TestSupervision:
    def test_nginx_and_redis_serve_real_clients_through_their_vips(
        self, require_netns: None, sup: LabDriver
    ) -> None:
        view = sup.status()
        assert {n["name"]: n["state"] for n in view["nodes"]} == dict.fromkeys(NODES, "up")
        placed = {g["name"]: (g["node"], g["mode"]) for g in view["groups"]}
        assert placed == {
            "web": ("n1", "normal"),
            "kv": ("n2", "normal"),
            "stubborn": ("n3", "normal"),
            "flaky": ("n1", "normal"),
        }

        # nginx, rendered by before_start for n1, through the VIP with curl
        sup.served(f"http://{WEB_VIP}/", "nginx on n1\n")
        _, web = latest(sup.events, AppStarted, group="web", node="n1")
        assert cmdline(web.pid).startswith("nginx: master process"), cmdline(web.pid)
        assert Path(sup.tmp, "n1", "nginx", "nginx.pid").read_text().strip() == str(web.pid)

        # redis with its own client, through the VIP
        assert redis(sup, "ping").stdout.strip() == "PONG"
        assert redis(sup, "set", "vigil:e2e", "supervised").stdout.strip() == "OK"
        assert redis(sup, "get", "vigil:e2e").stdout.strip() == "supervised"

        # ...running as user redis, never as root (AppStarted carries the pid)
        _, kv = latest(sup.events, AppStarted, group="kv", node="n2")
        ps = sup.in_ns("n2", "ps", "-o", "user=", "-p", str(kv.pid))
        assert ps.stdout.strip() == "redis", f"redis runs as {ps.stdout.strip()!r}: {ps.stderr}"
        uids = next(
            line.split()[1:]
            for line in Path(f"/proc/{kv.pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        )
        redis_uid = str(os.stat(sup.tmp / "n2" / "redis").st_uid)
        assert uids == [redis_uid] * 4, f"real/effective/saved/fs uids {uids}"
        assert "redis-server" in cmdline(kv.pid)

        # the other two answer too
        sup.served(f"http://{STUBBORN_VIP}:{APP_PORT}/", "stubborn on n3\n")
        sup.served(f"http://{FLAKY_VIP}:{APP_PORT}/", "flaky on n1\n")

    def test_run_method_steps_are_ordered(self, require_netns: None, sup: LabDriver) -> None:
        for group, node in (("web", "n1"), ("kv", "n2"), ("stubborn", "n3"), ("flaky", "n1")):
            steps = run_method(sup.events, group, node, timeout=5)
            started = steps[1].event
            assert isinstance(started, AppStarted) and started.pid > 0
            monitors = steps[2].event
            assert isinstance(monitors, MonitorsStarted) and monitors.monitors

    def test_halt_method_is_the_reverse_and_sigterm_ignorer_is_killed_after_stop_timeout(
        self, require_netns: None, sup: LabDriver
    ) -> None:
        _, started = latest(sup.events, AppStarted, group="stubborn", node="n3")
        members = process_group(started.pid)
        assert len(members) == 2, f"stubborn and its child: {members}"
        assert all("httpapp.py" in cmdline(p) for p in members)

        # The operator moves stubborn off n3 (n3 leaves its list): a real halt method on n3.
        mark = sup.events.mark()
        moved = cluster_spec(sup.tmp, stubborn=("n1", []))
        halt_asked = datetime.now(UTC)
        sup.apply(moved)
        # (placement commits to its bucket before it publishes the decision, so a supervisor
        # watching the bucket may begin the halt before the decision event reaches the stream)
        _, d = sup.events.wait(PlacementDecided, STEP_DEADLINE, mark, group="stubborn")
        assert d.node is None and d.previous == "n3" and d.epoch == started.epoch + 1, d
        off, _ = sup.events.wait(MonitorsStopped, STEP_DEADLINE, mark, group="stubborn", node="n3")
        stopped, s = sup.events.wait(
            AppStopped, STEP_DEADLINE + STOP_TIMEOUT, off.index, group="stubborn", node="n3"
        )
        released, _ = sup.events.wait(
            AddressReleased, STEP_DEADLINE, stopped.index, group="stubborn", node="n3"
        )
        down, dn = sup.events.wait(
            ServiceDown, STEP_DEADLINE, released.index, group="stubborn", node="n3"
        )
        assert_in_order([off, stopped, released, down], "stubborn halt method on n3")
        assert s.epoch == started.epoch == off.event.epoch == dn.epoch  # type: ignore[attr-defined]
        assert dn.reason == "user"
        assert not sup.events.select(AppStopFailed, mark, group="stubborn")

        # SIGTERM was sent and ignored; SIGKILL came only after stop_timeout
        waited = (ts(stopped) - ts(off)).total_seconds()
        assert STOP_TIMEOUT <= waited < STOP_TIMEOUT + 3.0, f"app_stopped {waited:.3f}s after halt"
        assert (ts(stopped) - halt_asked).total_seconds() >= STOP_TIMEOUT
        assert "stubborn: ignoring SIGTERM" in sup.logs("stubborn", node="n3")
        # nothing of it survived: neither the app nor its SIGTERM-deaf child
        assert [p for p in members if alive(p)] == []
        assert process_group(started.pid) == []
        assert sup.node_pids("n3", str(HTTP_APP)) == []
        assert STUBBORN_VIP not in sup.in_ns("n3", "ip", "-4", "addr").stdout

        # ...and it runs on n1 now, through the same run method, served through the same VIP
        run_method(sup.events, "stubborn", "n1", since=released.index)
        sup.wait_group("stubborn", "n1", "normal", timeout=STEP_DEADLINE)
        sup.served(f"http://{STUBBORN_VIP}:{APP_PORT}/", "stubborn on n1\n")

    def test_killed_app_is_restarted_on_the_same_node_then_fails_over_after_max_restarts(
        self, require_netns: None, sup: LabDriver
    ) -> None:
        """One scenario (restart.max counts the kills of both halves): a SIGKILLed nginx is
        restarted on its node; killed again and again, it fails for good after ``restart.max``
        restarts and moves to the next node."""
        first, old = latest(sup.events, AppStarted, group="web", node="n1")
        assert not sup.events.select(AppFailed, first.index, group="web"), "web failed already"
        mark = sup.events.mark()
        sup.kill_pid("n1", old.pid)

        failed, f = sup.events.wait(AppFailed, STEP_DEADLINE, mark, group="web")
        assert (f.node, f.final, f.exit_code) == ("n1", False, -signal.SIGKILL), f
        _, new = sup.events.wait(AppStarted, STEP_DEADLINE, failed.index, group="web")
        assert new.node == "n1" and new.pid != old.pid and new.epoch == old.epoch
        sup.events.wait(ServiceUp, STEP_DEADLINE, failed.index, group="web", node="n1")
        assert not alive(old.pid)
        assert process_group(old.pid) == [], "the old master's workers survived it"
        sup.served(f"http://{WEB_VIP}/", "nginx on n1\n")
        assert not sup.events.select(PlacementDecided, mark, group="web")

        # keep killing it
        kills = 1
        mark = sup.events.mark()
        final: tuple[Seen, AppFailed] | None = None
        while final is None:
            assert kills <= RESTART_MAX, "still restarting on n1 after restart.max restarts"
            newest, current = latest(sup.events, AppStarted, group="web", node="n1")
            # kill it once it is fully up (a kill before it is healthy is a failed start)
            sup.events.wait(ServiceUp, STEP_DEADLINE, newest.index, group="web", node="n1")
            before = sup.events.mark()
            sup.kill_pid("n1", current.pid)
            kills += 1
            failed, f = sup.events.wait(AppFailed, STEP_DEADLINE, before, group="web", node="n1")
            if kills <= RESTART_MAX:
                assert not f.final, f"gave up after {kills} kills (restart.max {RESTART_MAX})"
                sup.events.wait(ServiceUp, STEP_DEADLINE, failed.index, group="web", node="n1")
            else:
                final = sup.events.wait(
                    AppFailed, STEP_DEADLINE, before, group="web", node="n1", final=True
                )
        assert kills == RESTART_MAX + 1
        assert f"restart.max is {RESTART_MAX}" in final[1].reason, final[1]
        assert len(sup.events.select(AppStarted, first.index, group="web", node="n1")) == (
            RESTART_MAX + 1
        )

        # placement bans n1 for web and moves it to the next node of its list
        _, m = sup.events.wait(
            PlacementDecided,
            STEP_DEADLINE,
            final[0].index,
            group="web",
            where=lambda e: e.node is not None,
        )
        assert m.node == "n2", m
        released, _ = sup.events.wait(AddressReleased, STEP_DEADLINE, mark, group="web", node="n1")
        steps = run_method(sup.events, "web", "n2", since=mark)
        # Causal order by the publishers' clocks and the epoch, not by the order the recorder
        # received events from different publishers in: n2 reads the decision from the
        # bucket's watch and may announce its acquisition before placement's event arrives.
        assert ts(released) <= ts(steps[0])
        acquired = steps[0].event
        assert isinstance(acquired, AddressAcquired)
        assert m.epoch == acquired.epoch
        sup.wait_group("web", "n2", "failover", timeout=STEP_DEADLINE)
        sup.served(f"http://{WEB_VIP}/", "nginx on n2\n")
        assert sup.node_pids("n1", "nginx") == []
        assert WEB_VIP not in sup.in_ns("n1", "ip", "-4", "addr").stdout

    def test_monitor_failure_restarts_the_app(self, require_netns: None, sup: LabDriver) -> None:
        _, current = latest(sup.events, AppStarted, group="flaky", node="n1")
        flag = sup.tmp / "n1" / "fail.flag"
        mark = sup.events.mark()
        flag.touch()
        try:
            failed, f = sup.events.wait(AppFailed, STEP_DEADLINE, mark, group="flaky")
        finally:
            flag.unlink(missing_ok=True)
        assert (f.node, f.final) == ("n1", False), f
        assert "monitor failed" in f.reason and "fail.flag" in f.reason, f.reason
        assert "2 times in a row" in f.reason, f.reason
        # the app was running fine: the monitor, not its exit, stopped it
        stopped_mon, _ = sup.events.wait(MonitorsStopped, 5, mark, group="flaky", node="n1")
        assert stopped_mon.index < failed.index
        _, new = sup.events.wait(AppStarted, STEP_DEADLINE, failed.index, group="flaky")
        assert new.node == "n1" and new.pid != current.pid
        sup.events.wait(ServiceUp, STEP_DEADLINE, failed.index, group="flaky", node="n1")
        assert not alive(current.pid)
        assert not sup.events.select(PlacementDecided, mark, group="flaky")
        sup.served(f"http://{FLAKY_VIP}:{APP_PORT}/", "flaky on n1\n")

    def test_vigil_logs_shows_the_apps_output(self, require_netns: None, sup: LabDriver) -> None:
        marker = f"flaky: listening on {FLAKY_VIP}:{APP_PORT} on node n1"
        before = sup.logs("flaky").count(marker)  # the node where it runs (n1), found by the CLI
        assert before >= 1
        # restarted (killed): one more marker line
        _, current = latest(sup.events, AppStarted, group="flaky", node="n1")
        mark = sup.events.mark()
        sup.kill_pid("n1", current.pid)
        failed, _ = sup.events.wait(AppFailed, STEP_DEADLINE, mark, group="flaky", node="n1")
        sup.events.wait(ServiceUp, STEP_DEADLINE, failed.index, group="flaky", node="n1")
        out = sup.logs("flaky")
        assert out.count(marker) == before + 1, out
        # nginx's own output is captured too (its notices go to stderr)
        assert "nginx" in sup.logs("web", node="n1")

    def test_group_removed_from_the_file_is_halted_and_its_address_released(
        self, require_netns: None, sup: LabDriver
    ) -> None:
        _, started = latest(sup.events, AppStarted, group="kv", node="n2")
        mark = sup.events.mark()
        without = cluster_spec(sup.tmp, with_kv=False)
        sup.apply(without)
        # the supervisor's half of the halt method
        off, _ = sup.events.wait(MonitorsStopped, STEP_DEADLINE, mark, group="kv", node="n2")
        stopped, _ = sup.events.wait(AppStopped, STEP_DEADLINE, off.index, group="kv", node="n2")
        until(lambda: not alive(started.pid), 5, "redis-server to exit")
        assert sup.node_pids("n2", "redis-server") == []
        # the address service's half: the VIP goes, then service down
        if not poll(lambda: KV_VIP not in sup.in_ns("n2", "ip", "-4", "addr").stdout, 10.0):
            client = redis(sup, "ping")
            pytest.fail(
                f"{KV_VIP} is still on n2 10s after kv left the file and its app stopped; "
                f"n2's fence set vips: {fence_vips(sup, 'n2')}; "
                f"redis-cli from the client: {(client.stdout + client.stderr).strip()!r}"
            )
        released, _ = sup.events.wait(
            AddressReleased, STEP_DEADLINE, stopped.index, group="kv", node="n2"
        )
        down, _ = sup.events.wait(ServiceDown, STEP_DEADLINE, released.index, group="kv")
        assert_in_order([off, stopped, released, down], "kv halt method on n2")
        # nobody answers for the address any more (bounded: an unanswered ARP takes seconds)
        gone = sup.in_ns("client", "timeout", "2", "redis-cli", "-h", KV_VIP, "ping")
        assert gone.returncode != 0


def poll(probe: Callable[[], Any], timeout: float) -> bool:
    """Like ``until``, but says whether it held instead of failing the test."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fence_vips(sup: LabDriver, node: str) -> list[str]:
    proc = sup.in_ns(node, "nft", "-j", "list", "set", "netdev", "vigil", "vips")
    if proc.returncode != 0:
        return []
    for item in json.loads(proc.stdout)["nftables"]:
        if "set" in item:
            return [str(e) for e in item["set"].get("elem", [])]
    return []
