"""``vigil lab`` from the operator's side: the command line, run as a separate process.

One lab (``vigil lab --prefix ve2e<random> up --nodes 2``) serves the steps of ``TestLabCli`` in
order: ``exec`` and ``info`` on the live lab, then a simulated crash (every recorded process
SIGKILLed, the state file deleted) that ``down`` must clean up, and ``down`` again (idempotent).
The root check runs the CLI as user ``nobody``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import pytest
from nats.js.api import ConsumerConfig
from nats.js.errors import BadRequestError, KeyNotFoundError

import vigil.client
from vigil.core.bus import Bus, BusError
from vigil.core.credentials import Credentials
from vigil.core.subjects import Subjects
from vigil.lab.lab import LabState, lab_dir
from vigil.lab.netns import namespaces, pids_in
from vigil.lab.specs import generated_data
from vigil.testing.lab import LabDriver, lab_credentials

if TYPE_CHECKING:
    from conftest import Tools

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

CLIENT_IP = "10.213.0.250"


async def connect_as(prefix: LabDriver, role: str, url: str, **kw: Any) -> nats.NATS:
    """A plain NATS client holding the lab's credentials for ``role``."""
    options = lab_credentials(prefix.name, role).options([url])
    return await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, **options, **kw)


async def kv_consumers(prefix: LabDriver, url: str) -> dict[str, int]:
    """How many consumers each key-value bucket's stream has on the server."""
    nc = await connect_as(prefix, "reader", url)
    try:
        js = nc.jetstream()
        streams = [f"KV_{b}" for b in Subjects().buckets]
        return {n: (await js.stream_info(n)).state.consumer_count for n in streams}
    finally:
        await nc.close()


class Refusals:
    """The server's permission errors to one client (its ``error_cb``)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def note(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    async def expect(self, nc: nats.NATS, subject: str, timeout: float = 5.0) -> None:
        """Publish on ``subject`` and wait for the server to refuse it by name."""
        await nc.publish(subject, b'{"forged": true}')
        await nc.flush(timeout=5)
        deadline = time.monotonic() + timeout
        want = f'permissions violation for publish to "{subject.lower()}"'
        while not any(want in e for e in self.errors):
            assert time.monotonic() < deadline, f"not refused: {subject} ({self.errors})"
            await asyncio.sleep(0.05)


async def assert_absent(nc: nats.NATS, key: str) -> None:
    """No forged key reached a bucket: what the server refused is nowhere."""
    js = nc.jetstream()
    for bucket in Subjects().buckets:
        with contextlib.suppress(KeyNotFoundError):
            await (await js.key_value(bucket)).get(key)
            pytest.fail(f"{bucket} holds {key}")


def operator_cli(prefix: LabDriver, *args: str) -> Any:
    """``vigil ARGS`` with no URL nor credentials: VIGIL_LAB names the lab, whose door and
    operator credentials the command finds by itself."""
    env = {**os.environ, "VIGIL_LAB": prefix.name}
    env.pop("VIGIL_NATS_URL", None)
    env.pop("VIGIL_CREDS", None)
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli.main", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="class")
def cli_lab(lab_driver: LabDriver) -> LabDriver:
    """A two-node lab brought up with the command line (torn down and checked by lab_driver);
    one NATS server: the consumer-limit step below would build a thousand R3 consumers on
    three (test_lab_topology.py covers the three-server lab)."""
    proc = lab_driver.up_cli("--nodes", "2", "--nats-servers", "1", timeout=90)
    assert f"lab {lab_driver.name} is up: 2 nodes" in proc.stdout
    return lab_driver


class TestLabCli:
    def test_exec_runs_in_the_client_namespace(
        self, require_netns: None, cli_lab: LabDriver, tools: type[Tools]
    ) -> None:
        proc = cli_lab.lab_cli("exec", "client", "--", "ip", "-br", "addr", check=False)
        assert proc.returncode == 0, proc.stderr
        links = {
            line.split()[0].split("@")[0]: line.split()[2:] for line in proc.stdout.splitlines()
        }
        assert set(links) == {"lo", "eth0"}, proc.stdout
        assert f"{CLIENT_IP}/24" in links["eth0"]
        v4 = [a for addrs in links.values() for a in addrs if "." in a]
        assert sorted(v4) == sorted(["127.0.0.1/8", f"{CLIENT_IP}/24"]), proc.stdout

        # and it is that namespace, not merely one that looks like it
        proc = cli_lab.lab_cli(
            "exec", "client", "--", "stat", "-L", "-c", "%i", "/proc/self/ns/net", check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout) == os.stat(f"/run/netns/{cli_lab.ns('client')}").st_ino

        # a node's namespace, the exit code of the command, and an unknown name
        proc = cli_lab.lab_cli("exec", "n1", "--", "ip", "-br", "addr", "show", "eth0", check=False)
        assert proc.returncode == 0 and "10.213.0.11/24" in proc.stdout, proc
        assert cli_lab.lab_cli("exec", "client", "--", "false", check=False).returncode == 1
        proc = cli_lab.lab_cli("exec", "nosuch", "--", "true", check=False)
        assert proc.returncode == 2 and "unknown node" in proc.stderr

    async def test_info_json_gives_a_nats_url_the_host_can_use(
        self, require_netns: None, cli_lab: LabDriver, tools: type[Tools]
    ) -> None:
        proc = cli_lab.lab_cli("info", "-o", "json", check=False)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["prefix"] == cli_lab.name
        assert info["nodes"] == ["n1", "n2"]
        assert info["namespaces"] == [cli_lab.ns(w) for w in ("bus", "n1", "n2", "client")]
        url = info["nats_url"]
        assert url.startswith("nats://127.0.0.1:")
        assert info["nats_urls"] == [url] and list(info["nats"]) == ["nats-1"]
        assert info["node_states"]["n2"] == {"running": True, "frozen": False, "partitioned": False}
        for role in ("nats-1", "membership-1", "membership-2", "placement-1", "placement-2"):
            assert tools.alive(info["processes"][role]["pid"]), (role, info["processes"])

        # a process or node that does not exist: one line naming what does
        proc = cli_lab.lab_cli("kill", "membership-9", check=False)
        assert proc.returncode == 1 and "unknown process 'membership-9'" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        proc = cli_lab.lab_cli("freeze", "n9", check=False)
        assert proc.returncode == 1 and "unknown node 'n9'" in proc.stderr

        # the lab is secure: info hands out the CA and every role's seed file, 0600
        assert os.stat(info["ca"]).st_size > 0
        files = [info["creds"]["operator"], info["creds"]["reader"]]
        assert list(info["creds"]["nodes"]) == ["n1", "n2"]
        for f in [*files, *info["creds"]["nodes"].values()]:
            assert os.stat(f).st_mode & 0o777 == 0o600, f

        # a plain NATS client on the host with the reader's file: the server answers, with
        # JetStream and Vigil's buckets, and the events come through
        reader = Credentials(Path(info["creds"]["reader"]), Path(info["ca"]))
        nc = await nats.connect(
            url, connect_timeout=5, max_reconnect_attempts=0, **reader.options([url])
        )
        try:
            await nc.flush(timeout=5)
            assert nc.is_connected and nc.connected_server_version.major >= 2
            js = nc.jetstream()
            placement = await js.key_value(Subjects().bucket_placement)
            entry = await placement.get("web1")
            assert json.loads(entry.value)["node"] == "n1"
            sub = await nc.subscribe(Subjects().all_events)
            await nc.flush(timeout=5)
            assert sub.subject == "vigil.>"
        finally:
            await nc.close()

    async def test_vigil_status_leaves_no_consumers_behind(
        self, require_netns: None, cli_lab: LabDriver, tools: type[Tools]
    ) -> None:
        url = cli_lab.url
        baseline = await kv_consumers(cli_lab, url)
        for _ in range(3):
            proc = cli_lab.vigil("status", "-o", "json", role="reader", check=False)
            assert proc.returncode == 0, proc.stderr
        # the CLI has exited: whatever it created on the server should go with it
        deadline = time.monotonic() + 5
        while (now := await kv_consumers(cli_lab, url)) != baseline:
            assert time.monotonic() < deadline, (
                f"consumers per bucket stream: before {baseline}, after 3 x vigil status {now}"
            )
            await asyncio.sleep(0.2)

    async def test_vigil_status_never_prints_a_made_up_view(
        self, require_netns: None, cli_lab: LabDriver, tools: type[Tools]
    ) -> None:
        """Fill the placement stream up to the server's consumer limit (what ~1000 status reads
        in 5 minutes used to do, when listing keys left a consumer behind each time), then ask
        ``vigil status``: it must fail with a one-line reason, or tell the truth (web1 on n1);
        never exit 0 with a cluster where nothing runs (it used to print every group halted at
        epoch 0, because any failure to list a bucket read as "empty")."""
        url = cli_lab.url
        nc = await connect_as(cli_lab, "operator", url)
        js = nc.jetstream()
        stream = f"KV_{Subjects().bucket_placement}"
        filled: list[str] = []
        try:
            for i in range(5000):  # bounded; the server refuses at its limit (1000 here)
                name = f"ve2efill{i}"
                try:
                    # named (CONSUMER.CREATE.<stream>.<name>): what a role may ask for
                    await js.add_consumer(stream, ConsumerConfig(durable_name=name, name=name))
                except BadRequestError as exc:
                    assert exc.err_code == 10026, exc  # maximum consumers limit reached
                    break
                filled.append(name)
            else:
                pytest.fail("the server never refused a consumer")
            proc = cli_lab.vigil("status", "-o", "json", role="reader", check=False)
        finally:
            for name in filled:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, name)
            await nc.close()
        if proc.returncode != 0:
            assert len(proc.stderr.splitlines()) == 1, proc.stderr
            return
        web1 = next(g for g in json.loads(proc.stdout)["groups"] if g["name"] == "web1")
        assert (web1["node"], web1["mode"]) == ("n1", "normal") and web1["epoch"] >= 1, (
            f"vigil status exited 0 with a view of a cluster that does not exist: {proc.stdout}"
        )

    async def test_anonymous_clients_are_refused(
        self, require_netns: None, cli_lab: LabDriver
    ) -> None:
        url = cli_lab.url
        ca = lab_credentials(cli_lab.name, "reader").tls_ca
        for creds in (Credentials(), Credentials(tls_ca=ca)):  # plaintext, then TLS, no user
            with pytest.raises(BusError) as refused:
                await Bus.connect([url], Subjects(), "e2e", persistent=False, credentials=creds)
            assert "TLS" in str(refused.value) or "authorization" in str(refused.value), refused

    async def test_the_reader_watches_and_writes_nothing(
        self, require_netns: None, cli_lab: LabDriver
    ) -> None:
        s = Subjects()
        url = cli_lab.url
        refusals = Refusals()
        nc = await connect_as(cli_lab, "reader", url, error_cb=refusals.note)
        try:
            sub = await nc.subscribe(s.all_events)
            await nc.flush(timeout=5)
            # an event: the operator halts and runs web2 (`vigil` finds the lab's operator
            # credentials by itself through VIGIL_LAB)
            for verb in ("halt", "run"):
                assert operator_cli(cli_lab, verb, "web2").returncode == 0
            msg = await sub.next_msg(timeout=10)
            assert msg.subject.startswith("vigil."), msg.subject
            for bucket in s.buckets:
                await refusals.expect(nc, f"$KV.{bucket}.ve2e-reader")
            await refusals.expect(nc, s.config_applied)
            await refusals.expect(nc, s.heartbeat("n1"))
            await assert_absent(nc, "ve2e-reader")
        finally:
            await nc.close()

    async def test_a_node_speaks_only_for_itself(
        self, require_netns: None, cli_lab: LabDriver
    ) -> None:
        s = Subjects()
        url = cli_lab.url
        refusals = Refusals()
        nc = await connect_as(cli_lab, "node-n1", url, error_cb=refusals.note)
        try:
            # it reads what it needs (so the refusals below are about n2, not a dead client)
            placement = await nc.jetstream().key_value(s.bucket_placement)
            assert json.loads((await placement.get("web1")).value)["node"] == "n1"
            await refusals.expect(nc, s.heartbeat("n2"))
            await refusals.expect(nc, "vigil.address.n2.acquired")
            await refusals.expect(nc, "vigil.app.n2.started")
            await refusals.expect(nc, s.service("web2", "up", "n2"))
            await refusals.expect(nc, f"$KV.{s.bucket_observed}.address.n2.ve2e-n1")
            await refusals.expect(nc, f"$KV.{s.bucket_nodes}.n2")
            await refusals.expect(nc, f"$KV.{s.bucket_placement}.web2")
            await assert_absent(nc, "ve2e-n1")
        finally:
            await nc.close()

    def test_operator_commands_use_the_labs_credentials(
        self, require_netns: None, cli_lab: LabDriver, tmp_path: Path
    ) -> None:
        proc = operator_cli(cli_lab, "status", "-o", "json")
        assert proc.returncode == 0, proc.stderr
        view = json.loads(proc.stdout)
        assert {g["name"] for g in view["groups"]} == {"web1", "web2"}, view
        assert operator_cli(cli_lab, "halt", "web1").returncode == 0
        assert operator_cli(cli_lab, "run", "web1").returncode == 0
        spec = tmp_path / "lab.yaml"
        spec.write_text(
            json.dumps(generated_data(2))
        )  # JSON is YAML: what `lab up --nodes 2` applied
        proc = operator_cli(cli_lab, "apply", "-f", str(spec))
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 60
        while True:  # web1 back home after halt + run
            groups = json.loads(operator_cli(cli_lab, "status", "-o", "json").stdout)["groups"]
            web1 = next(g for g in groups if g["name"] == "web1")
            if (web1["node"], web1["mode"]) == ("n1", "normal"):
                break
            assert time.monotonic() < deadline, f"web1 not back on n1: {web1}"
            time.sleep(0.2)

    def test_down_cleans_up_after_a_crashed_lab(
        self, require_netns: None, cli_lab: LabDriver, tools: type[Tools]
    ) -> None:
        state_file = lab_dir(cli_lab.name) / "lab.json"
        state = LabState.load(cli_lab.name)
        assert state is not None and state_file.exists()
        recorded = [p.pid for p in state.procs]
        cli_lab.prefix.note_pids()
        before = set(cli_lab.prefix.namespaces())
        assert len(before) == 4, before
        # the crash: every recorded process dies at once, and the state file is gone
        for pid in recorded:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        tools.wait_until(
            lambda: not any(tools.alive(p) for p in recorded), 5.0, "the recorded processes to die"
        )
        state_file.unlink()
        left = [pid for ns in before for pid in pids_in(ns)]
        assert left, "the apps should have outlived their supervisors (they are the leftovers)"

        proc = cli_lab.lab_cli("down", check=False)
        assert proc.returncode == 0, proc.stderr
        assert f"lab {cli_lab.name} is down (4 namespaces removed)" in proc.stdout
        assert not [n for n in namespaces() if n.startswith(f"{cli_lab.name}-")]
        assert not [p for p in left if tools.alive(p)], "down left processes of the lab alive"

    def test_down_is_idempotent(
        self, require_netns: None, cli_lab: LabDriver, tools: type[Tools]
    ) -> None:
        proc = cli_lab.lab_cli("down", check=False)  # the lab, if a test before left it up
        assert proc.returncode == 0, proc.stderr
        for _ in range(2):
            proc = cli_lab.lab_cli("down", check=False)
            assert proc.returncode == 0, proc.stderr
            assert f"lab {cli_lab.name} is down (0 namespaces removed)" in proc.stdout
        # and for a prefix that never had a lab
        never = f"ve2e{secrets.token_hex(3)}"
        proc = tools.run([tools.VIGIL, "lab", "--prefix", never, "down"], timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert not [n for n in namespaces() if n.startswith(f"{never}-")]


# -- without root ---------------------------------------------------------------------------------
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def as_nobody(tools: type[Tools]) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment that run Vigil's CLI as user nobody: the ``vigil`` script
    when nobody can run this environment's interpreter, else the same CLI module
    (``python -m vigil.cli.main``) with a system interpreter of the same version (this venv's
    interpreter may live under /root, which nobody cannot enter)."""
    tools.netns_gate()  # runs before the tests' require_netns: same rule
    root = ":".join(str(Path(p).parent) for p in vigil.__path__)
    site = sysconfig.get_paths()["purelib"]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }
    if tools.run([*AS_NOBODY, tools.VIGIL, "--help"], env=env).returncode == 0:
        return [*AS_NOBODY, tools.VIGIL], env
    env["PYTHONPATH"] = f"{root}:{site}"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        check = tools.run([*AS_NOBODY, python, "-c", "import vigil.cli.main, msgspec"], env=env)
        if check.returncode == 0:
            return [*AS_NOBODY, python, "-m", "vigil.cli.main"], env
    pytest.fail(f"no {version} that user nobody can run Vigil's CLI with")


@pytest.mark.parametrize(
    "command",
    [
        ["up"],
        ["up", "--nodes", "2"],
        ["down"],
        ["kill", "n1"],
        ["revive", "n1"],
        ["kill", "membership-1"],
        ["kill", "--no-restart", "nats-2"],
        ["start", "nats-2"],
        ["freeze", "n1"],
        ["thaw", "n1"],
        ["partition", "n1"],
        ["heal", "n1"],
        ["info", "-o", "json"],
        ["exec", "client", "--", "ip", "-br", "addr"],
        ["demo"],
    ],
    ids=lambda c: " ".join(c),
)
def test_lab_commands_without_root_exit_2_with_one_line(
    require_netns: None,
    as_nobody: tuple[list[str], dict[str, str]],
    tools: type[Tools],
    command: list[str],
) -> None:
    argv, env = as_nobody
    prefix = f"ve2e{secrets.token_hex(3)}"
    proc = tools.run([*argv, "lab", "--prefix", prefix, *command], env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "root" in lines[0] and "CAP_NET_ADMIN" in lines[0], lines[0]
    assert lines[0].startswith(f"vigil: lab {command[0]}: ")
    assert proc.stdout == ""
    assert not [n for n in namespaces() if n.startswith(f"{prefix}-")]
    assert not lab_dir(prefix).exists()
