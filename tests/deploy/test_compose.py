"""The compose deployment run for real, as a user would (``make test-deploy``, root).

Docker is installed when missing and a daemon started when none runs; the images are built
without a registry (tests/deploy/dockerhost.py). Then, with compose/docker-compose.yml and
compose/two-hosts.yml (two hosts, each a network namespace on an internal bridge, a client in a
third):

1. ``up``; ``vigil apply`` of tests/deploy/cluster.yaml through the CLI container;
   The bus is secure as in production: a bundle from ``vigil secure init`` (TLS, one nkey per
   role), each container mounting only its own credentials. Anonymous clients are refused, the
   reader cannot write;
2. the client probes web1's VIP: served by n1;
3. ``docker kill`` of host 1 (its namespace holder and its node containers): the client is
   served from n2; the time from the kill to the first answer from n2 is printed;
4. one NATS server killed: status, writes and the VIPs keep working;
5. ``down`` then ``up``: the applied state is still there, no container restarts;
6. ``vigil address --cleanup`` on a stopped host removes its VIPs and nftables table;
7. everything torn down: containers, volumes, networks, the images built (the base image is
   kept as a cache), and nothing of ours left on the machine's interfaces or nftables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.testing.probe import Probe
from vigil.testing.waiting import wait_until

from . import dockerhost
from .dockerhost import ROOT, log, run

pytestmark = pytest.mark.deploy

PROJECT = "vigil-deploy-test"
FILES = ("compose/docker-compose.yml", "compose/two-hosts.yml")
SUBNET = "10.231.0."
WEB1 = "10.231.0.101"
WEB2 = "10.231.0.102"
NATS_URL = "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222"


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "the compose deployment test needs root (Docker, network namespaces)"
    if os.environ.get("VIGIL_REQUIRE_NETNS") == "1":
        pytest.fail(message)
    pytest.skip(message)


class Compose:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env}
        self.argv = ["docker", "compose", "-p", PROJECT]
        for f in FILES:
            self.argv += ["-f", str(ROOT / f)]

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return run(*self.argv, *args, check=check, timeout=timeout, env=self.env)

    def container(self, service: str) -> str:
        return f"{PROJECT}-{service}-1"

    def containers(self) -> list[str]:
        label = f"label=com.docker.compose.project={PROJECT}"
        return run("docker", "ps", "-a", "-q", "--filter", label).split()


def client_probe(compose: Compose, vip: str) -> Probe:
    """The real client (``vigil.lab.probe``, in the Vigil image) in the client's container,
    connecting to ``vip`` every 20 ms."""
    python = ["docker", "exec", compose.container("client"), "python3"]
    return Probe(python, f"{vip}:8080", timeout=0.2, duration=900)


def served_by(probe: Probe, node: str, after: float, timeout: float) -> float:
    """The time of the first answer from ``node`` sent after ``after``."""

    def tail() -> str:
        lines = "\n".join(f"{a.t:.3f} {a.ok} {a.text}" for a in probe.answers[-10:])
        return f"the client served by {node}; last answers:\n{lines}"

    return wait_until(lambda: probe.served_by(node, after), timeout, tail, interval=0.05).t


def status(compose: Compose) -> dict[str, object]:
    """`vigil status` from the client's namespace, with the reader's credentials."""
    out = run(
        "docker", "exec", "-e", f"VIGIL_NATS_URL={NATS_URL}", compose.container("client"),
        "vigil", "status", "-o", "json", timeout=60,
    )  # fmt: skip
    return dict(json.loads(out))


def refused(compose: Compose, *argv: str, env: tuple[str, ...] = ()) -> str:
    """A `vigil` command from the client's namespace that the bus must refuse: its error."""
    flags = [f"--env={e}" for e in (f"VIGIL_NATS_URL={NATS_URL}", *env)]
    done = subprocess.run(
        ["docker", "exec", *flags, compose.container("client"), "vigil", *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0, f"vigil {' '.join(argv)} was not refused: {done.stdout}"
    return done.stderr.strip()


def secure_bundle(directory: Path) -> Path:
    """What an operator runs once before `up` (compose/README.md, "Credentials")."""
    names = [f"--name={n}" for n in ("nats1", "nats2", "nats3", "localhost", "127.0.0.1")]
    run(
        sys.executable, "-m", "vigil.cli.main", "secure", "init", str(directory),
        "--at", "/etc/vigil/secure", "--group", "10001", "--nodes", "n1,n2", *names,
    )  # fmt: skip
    return directory


def wait_status(compose: Compose, want: dict[str, str], nodes_up: set[str], timeout: float) -> None:
    """Until the groups run where ``want`` says ({group: node}) and ``nodes_up`` are up."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            view = status(compose)
        except RuntimeError as exc:
            last = exc
        else:
            last = view
            groups = {g["name"]: g for g in view["groups"]}  # type: ignore[attr-defined]
            up = {n["name"] for n in view["nodes"] if n["state"] == "up"}  # type: ignore[attr-defined]
            if nodes_up <= up and all(
                groups.get(g, {}).get("node") == n and groups[g]["mode"] in ("normal", "failover")
                for g, n in want.items()
            ):
                return
        time.sleep(1)
    raise AssertionError(f"status never reached {want} with {nodes_up} up; last: {last}")


def restart_counts(compose: Compose) -> dict[str, int]:
    out = {}
    for cid in compose.containers():
        name, count = run("docker", "inspect", "-f", "{{.Name}} {{.RestartCount}}", cid).split()
        out[name.lstrip("/")] = int(count)
    return out


def keep_logs(compose: Compose, name: str, since: float | None = None) -> None:
    """The containers' logs, for a post-mortem (they go with `down`)."""
    args = ["logs", "--no-color", "--timestamps"]
    if since is not None:
        args += ["--since", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))]
    dockerhost.STATE.mkdir(parents=True, exist_ok=True)
    (dockerhost.STATE / name).write_text(compose(*args, check=False, timeout=120))
    log(f"container logs in {dockerhost.STATE / name}")


def host_leftovers() -> list[str]:
    """Anything of the test on the machine itself: addresses, nftables table, bridges."""
    found = [line for line in run("ip", "-4", "-o", "addr").splitlines() if SUBNET in line]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [line for line in tables.splitlines() if line.split()[-1:] == ["vigil"]]
    networks = run("docker", "network", "ls", "-q", "--filter", f"name={PROJECT}").split()
    volumes = run("docker", "volume", "ls", "-q", "--filter", f"name={PROJECT}").split()
    return found + [f"network {n}" for n in networks] + [f"volume {v}" for v in volumes]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    require_root()
    started = time.monotonic()
    dockerhost.ensure_installed()
    with dockerhost.daemon():
        built: list[str] = []
        compose: Compose | None = None
        try:
            dockerhost.ensure_base_image()
            built.append(nats := dockerhost.build_nats_image())
            built.append(vigil := dockerhost.build_vigil_image())
            log(f"images ready after {time.monotonic() - started:.0f}s")
            bundle = secure_bundle(tmp_path_factory.mktemp("deploy") / "secure")
            compose = Compose(
                {
                    "VIGIL_IMAGE": vigil,
                    "NATS_IMAGE": nats,
                    "VIGIL_CONFIG_DIR": str(ROOT),
                    "VIGIL_SECURE_DIR": str(bundle),
                }
            )
            yield compose
        finally:
            if compose is not None:
                keep_logs(compose, "compose.log")
                compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
            dockerhost.remove_images(*built)
            leftovers = host_leftovers()
            log(f"torn down after {time.monotonic() - started:.0f}s in all")
        assert not leftovers, f"left behind: {leftovers}"


# Setup included: on a machine that never saw Docker, installing it and building the base image
# from Debian's mirror come first (minutes on a busy machine); the target is 10 minutes.
@pytest.mark.timeout(1800)
def test_compose_deployment_fails_over_between_two_hosts(deployment: Compose) -> None:
    compose = deployment
    log("compose up")
    compose("up", "-d", "--quiet-pull")
    # The NATS cluster elects its JetStream leaders first: apply retries until it is stored.
    deadline = time.monotonic() + 120
    while True:
        try:
            compose("run", "--rm", "vigil", "apply", "-f", "tests/deploy/cluster.yaml")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    log("applied tests/deploy/cluster.yaml through the CLI container")
    wait_status(compose, {"web1": "n1", "web2": "n2"}, {"n1", "n2"}, timeout=120)

    # -- the bus lets no one in ------------------------------------------------------------
    anonymous = refused(compose, "status", env=("VIGIL_CREDS=",))
    assert "authoriz" in anonymous.lower(), anonymous
    reader = refused(compose, "halt", "web1")
    assert "not authorized" in reader, reader
    log(f"anonymous refused ({anonymous}); the reader may not halt ({reader})")

    probe = client_probe(compose, WEB1)
    try:
        served_by(probe, "n1", time.time(), timeout=30)

        # -- host 1 dies ---------------------------------------------------------------------
        killed = time.time()
        run("docker", "kill", *(compose.container(s) for s in ("address1", "supervisor1", "host1")))
        served = served_by(probe, "n2", killed, timeout=30)
        failed = Counter(a.error for a in probe.since(killed) if a.t < served and not a.ok)
        message = (
            f"failover: web1 served from n2 {1000 * (served - killed):.0f} ms after "
            f"`docker kill` of host 1 (failed probes in between: {dict(failed)})"
        )
        log(message)
        keep_logs(compose, "failover.log", since=killed - 5)
        print(message, file=sys.stderr)
        (ROOT / "tests" / "deploy" / "last-failover.txt").write_text(message + "\n")

        # -- one NATS server dies ------------------------------------------------------------
        run("docker", "kill", compose.container("nats3"))
        killed = time.time()
        compose("run", "--rm", "vigil", "apply", "-f", "tests/deploy/cluster.yaml")  # a write
        wait_status(compose, {"web1": "n2", "web2": "n2"}, {"n2"}, timeout=60)
        served_by(probe, "n2", time.time(), timeout=15)
    finally:
        probe.stop()
    log("one NATS server down: status, apply and web1 still work")

    # -- down, then up on the same volumes -----------------------------------------------------
    keep_logs(compose, "before-down.log")
    compose("down", "--timeout", "10")
    compose("up", "-d")
    log("down and up again")
    # web1 stays on n2 (failback is manual): the applied state, not a fresh start
    wait_status(compose, {"web1": "n2", "web2": "n2"}, {"n1", "n2"}, timeout=180)
    probe = client_probe(compose, WEB2)
    try:
        served_by(probe, "n2", time.time(), timeout=30)
    finally:
        probe.stop()
    restarts = {name: n for name, n in restart_counts(compose).items() if n}
    assert not restarts, f"containers restarted after down/up: {restarts}"

    # -- cleanup of a host whose address service is gone --------------------------------------
    compose("stop", "address2")
    out = compose("run", "--rm", "--no-deps", "address2", "address", "--cleanup")
    assert f"removed {WEB1}/24" in out and "deleted nftables table netdev vigil" in out, out
    left = run("docker", "exec", compose.container("host2"), "ip", "-4", "-o", "addr")
    assert WEB1 not in left and WEB2 not in left, left
    log("vigil address --cleanup removed host 2's VIPs and fence")
