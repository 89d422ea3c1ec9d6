"""``vigil``: the operator's command line, and the entry point of every service.

Exit codes: 0 success, 1 failure (a one-line reason on stderr), 2 usage or missing privileges.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from vigil.wire.cluster import ClusterSpec
from vigil.wire.records import Admin

from ..core import config as config_mod
from ..core.bus import Bus, BusError, nats_urls
from ..core.credentials import Credentials, redact
from ..core.subjects import Subjects

if TYPE_CHECKING:
    from ..lab.lab import LabState

# The example cluster files ship inside the package, so an installed wheel finds them too.
EXAMPLE = Path(str(files("vigil.lab") / "examples" / "lab.yaml"))


def fail(message: str, code: int = 1) -> int:
    print(f"vigil: {message}", file=sys.stderr)
    return code


def _lab_state(args: argparse.Namespace) -> LabState | None:
    from ..lab.lab import LabState

    # VIGIL_LAB names the lab, as it does for ``vigil lab`` (these commands have no --prefix)
    return LabState.load(os.environ.get("VIGIL_LAB") or getattr(args, "prefix", None) or "vlab")


def client_urls(args: argparse.Namespace) -> list[str]:
    """For operator commands: --nats, VIGIL_NATS_URL, else the running lab's door, else local."""
    if args.nats or os.environ.get("VIGIL_NATS_URL"):
        return nats_urls(args.nats)
    state = _lab_state(args)
    return state.host_urls if state else nats_urls(None)


def client_credentials(args: argparse.Namespace, urls: list[str]) -> Credentials:
    """An operator command's credentials: --creds and friends, else VIGIL_CREDS, else, against
    a secure lab's doors, the lab's operator credentials."""
    given = credentials(args)
    if given != Credentials():
        return given
    state = _lab_state(args)
    if state is None or not state.secure or not set(urls) <= set(state.host_urls):
        return given
    from ..lab.lab import Lab

    return Lab(state.prefix).credentials(state, "operator")


def credentials(args: argparse.Namespace) -> Credentials:
    """--creds / --tls-ca / --tls-cert / --tls-key, else VIGIL_CREDS and friends."""
    return Credentials.resolve(
        getattr(args, "creds", None),
        getattr(args, "tls_ca", None),
        getattr(args, "tls_cert", None),
        getattr(args, "tls_key", None),
    )


async def connect(args: argparse.Namespace, service: str, name: str | None = None) -> Bus:
    return await Bus.connect(
        nats_urls(args.nats), Subjects.from_env(), service, name=name, credentials=credentials(args)
    )


async def cli_bus(args: argparse.Namespace) -> Bus:
    """An operator command's connection; what the server refuses it is kept for ``trouble``."""
    # asyncio warns about every TLS connection closed by the server's EOF; a command says
    # what went wrong itself, in one line
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    urls = client_urls(args)
    bus = await Bus.connect(
        urls,
        Subjects.from_env(),
        "cli",
        persistent=False,
        credentials=client_credentials(args, urls),
    )
    args.denied = bus.denied
    return bus


def trouble(args: argparse.Namespace, exc: BaseException, doing: str = "reach NATS") -> int:
    """One line for a failed bus command: refused permissions and credentials say so, and
    no URL shows its password."""
    where = ",".join(redact(u) for u in client_urls(args))
    denied: list[str] = getattr(args, "denied", [])
    if denied:
        return fail(f"not authorized at {where}: {denied[-1]}")
    if isinstance(exc, BusError):
        return fail(f"cannot reach NATS at {where}: {exc}")
    text = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return fail(f"cannot {doing} at {where}: {text}")


# -- operator commands ---------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = config_mod.load_file(args.file)
    except config_mod.ConfigError as exc:
        return fail(f"{args.file}: {exc}")
    print(f"{args.file}: valid ({len(spec.nodes)} nodes, {len(spec.groups)} groups)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        spec = config_mod.load_file(args.file)
    except config_mod.ConfigError as exc:
        return fail(f"{args.file}: {exc} (nothing applied)")
    from ..core.clusterconfig import store

    async def go() -> int:
        bus = await cli_bus(args)
        try:
            size, limit = len(config_mod.encode(spec)), bus.nc.max_payload
            if size > limit:
                raise config_mod.ConfigError("", f"{size} bytes encoded; this bus takes {limit}")
            return await store(bus, spec)
        finally:
            await bus.close()

    try:
        revision = asyncio.run(go())
    except config_mod.ConfigError as exc:
        return fail(f"{args.file}: {exc} (nothing applied)")
    except Exception as exc:
        return trouble(args, exc)
    print(f"applied {args.file} as revision {revision}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..core import redundancy, status

    async def go() -> status.StatusView:
        bus = await cli_bus(args)
        try:
            view, degraded = await asyncio.gather(status.read(bus), redundancy.degraded(bus))
            view.bus = degraded
            return view
        finally:
            await bus.close()

    try:
        view = asyncio.run(go())
    except Exception as exc:
        return trouble(args, exc)
    if args.output == "json":
        print(msgspec.json.encode(view).decode())
    else:
        print(status.render_table(view))
    return 0


def cmd_secure(args: argparse.Namespace) -> int:
    from ..secure.bundle import BundleError, init

    if bool(args.file) == bool(args.nodes):
        return fail("secure init: give either -f FILE or --nodes n1,n2,...", 2)
    try:
        if args.file:
            spec = config_mod.load_file(args.file)
            nodes, cluster = [n.name for n in spec.nodes], spec.cluster.name
        else:
            nodes, cluster = [n.strip() for n in args.nodes.split(",") if n.strip()], "vigil"
            for i, n in enumerate(nodes):
                if not config_mod.valid_name(n):
                    raise config_mod.ConfigError(f"--nodes[{i}]", f"invalid node name {n!r}")
        bundle = init(
            Path(args.dir),
            nodes,
            subjects=Subjects.from_env(),
            names=args.name or None,
            cluster=cluster,
            listen=args.listen,
            force=args.force,
            new_ca=args.new_ca,
            at=Path(args.at) if args.at else None,
            group=args.group,
        )
    except (config_mod.ConfigError, BundleError) as exc:
        return fail(str(exc))
    except PermissionError as exc:
        return fail(f"secure init: {exc.strerror}: {exc.filename} (--group needs root)")
    mode = "0600" if args.group is None else f"0640, group {args.group}"
    print(f"wrote {bundle.manifest} (CA {bundle.ca}, {len(nodes) + 4} credentials, {mode})")
    return 0


# -- services ------------------------------------------------------------------------------------
def node_name(args: argparse.Namespace) -> str | None:
    return args.node or os.environ.get("VIGIL_NODE")


def cmd_service(args: argparse.Namespace) -> int:
    from ..core.runner import run

    service = args.command
    if service == "address" and args.cleanup:
        from ..address.cleanup import cleanup

        for line in cleanup():
            print(line)
        return 0
    node = node_name(args) if service in ("address", "supervisor") else None
    if service in ("address", "supervisor") and not node:
        return fail(f"{service}: --node (or VIGIL_NODE) is required", 2)

    async def main() -> None:
        bus = await connect(args, service, name=node or getattr(args, "name", None))
        try:
            if service == "membership":
                from ..membership.service import Membership

                await Membership(bus).run()
            elif service == "placement":
                from ..placement.service import PlacementService

                await PlacementService(bus).run()
            elif service == "address":
                from ..address.service import AddressService

                assert node is not None
                await AddressService(bus, node, args.interface).run()
            else:
                from ..supervisor.service import Supervisor

                assert node is not None
                state_dir = Path(args.state_dir or f"/var/lib/vigil/{node}")
                await Supervisor(bus, node, state_dir).run()
        finally:
            await bus.close()

    return run(main(), service)


def cmd_nats(args: argparse.Namespace) -> int:
    """The embedded broker in the foreground (JetStream on, data in the state directory)."""
    from ..core import embedded

    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    argv = embedded.server_command(args.host, args.port, state)
    print(
        f"vigil: embedded NATS on nats://{args.host}:{args.port}, data in {state}", file=sys.stderr
    )
    os.execv(argv[0], argv)


def cmd_logs(args: argparse.Namespace) -> int:
    """The tail of a group's log, asked of the supervisor on the node (the group's node by
    default)."""
    from vigil.wire.records import Placement

    from ..core.bus import get_record, kv

    async def go() -> bytes:
        bus = await cli_bus(args)
        try:
            node = args.node
            if node is None:
                placement = await get_record(
                    await kv(bus, bus.subjects.bucket_placement), args.group, Placement
                )
                if placement is None or placement.node is None:
                    raise LookupError(f"group {args.group!r} runs nowhere; give --node")
                node = placement.node
            reply = await bus.nc.request(
                bus.subjects.logs_request(node), args.group.encode(), timeout=3
            )
            return bytes(reply.data)
        finally:
            await bus.close()

    try:
        data = asyncio.run(go())
    except LookupError as exc:
        return fail(str(exc))
    except Exception as exc:
        return trouble(args, exc, "get an answer from the supervisor")
    lines = data.decode(errors="replace").splitlines()
    print("\n".join(lines[-args.lines :]))
    return 0


def cmd_intent(args: argparse.Namespace) -> int:
    """halt / run / switchover: an operator's intent, stored and announced on the bus."""
    from . import intents

    async def go() -> str:
        bus = await cli_bus(args)
        try:
            if args.command == "switchover":
                old, new = await intents.switchover(bus, args.group, args.to)
                return f"{args.group}: switchover from {old} to {new} requested"
            if args.command == "enable":
                await intents.enable(bus, args.group)
                return f"{args.group}: switching enabled, failures forgotten"
            if args.command == "halt":
                admin: Admin = "offline" if args.keep_address else "halted"
                await intents.set_admin(bus, args.group, admin)
                return f"{args.group}: {admin} requested"
            await intents.set_admin(bus, args.group, "run")
            return f"{args.group}: run requested"
        finally:
            await bus.close()

    try:
        print(asyncio.run(go()))
    except intents.IntentError as exc:
        return trouble(args, exc) if getattr(args, "denied", None) else fail(str(exc))
    except Exception as exc:
        return trouble(args, exc)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from ..core.durations import parse_duration
    from .events import show

    try:
        since = timedelta(seconds=parse_duration(args.since)) if args.since else None
    except ValueError as exc:
        return fail(f"--since: {exc}", 2)

    async def go() -> None:
        bus = await cli_bus(args)
        try:
            await show(bus, since, args.follow, args.output == "json")
        finally:
            await bus.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        return trouble(args, exc, "read events")
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    from ..core.endpoints import Endpoint, endpoints

    async def go() -> list[Endpoint]:
        bus = await cli_bus(args)
        try:
            return await endpoints(bus, args.service)
        finally:
            await bus.close()

    try:
        live = asyncio.run(go())
    except LookupError as exc:
        return fail(str(exc.args[0]))
    except Exception as exc:
        return trouble(args, exc)
    if args.output == "json":
        print(msgspec.json.encode(live).decode())
    elif not live:
        print(f"service {args.service}: no live endpoint")
    else:
        for e in live:
            print(f"{e.address:<16} {e.group:<12} {e.node}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .up import up

    return up(
        args.file,
        node_name(args),
        args.interface,
        Path(args.state_dir),
        args.nats,
        args.nats_servers,
        secure=not args.insecure,
    )


# -- the lab -------------------------------------------------------------------------------------
def cmd_lab(args: argparse.Namespace) -> int:
    from ..lab import lab as lab_mod
    from ..lab.netns import LabError

    reason = lab_mod.require_root()
    if reason is not None:
        return fail(f"lab {args.lab_command}: {reason}", 2)
    lab = lab_mod.Lab(args.prefix)
    try:
        if args.lab_command == "up":
            spec = lab_spec(args)
            state = lab.up(spec, nats_servers=args.nats_servers, secure=not args.insecure)
            print(
                f"lab {args.prefix} is up: {len(state.nodes)} nodes, "
                f"{state.nats_servers} NATS server(s) at {','.join(state.host_urls)}"
            )
            print(f"  watch it:  {watch_hint(lab, state)}")
            print("  status:    vigil status")
        elif args.lab_command == "down":
            removed = lab.down()
            print(f"lab {args.prefix} is down ({len(removed)} namespaces removed)")
        elif args.lab_command == "kill":
            if args.target in lab.state().nodes:
                if args.no_restart:
                    return fail("lab kill: --no-restart is for a process; a node stays dead", 2)
                killed = lab.kill(args.target)
                print(f"node {args.target} killed ({len(killed)} processes) and its link is down")
            else:
                pid = lab.kill_process(args.target, restart=not args.no_restart)
                then = "held down until 'vigil lab start'" if args.no_restart else "restarting"
                print(f"{args.target} killed (pid {pid}); {then}")
        elif args.lab_command == "start":
            pid = lab.start_process(args.process)
            print(f"{args.process} started (pid {pid})")
        elif args.lab_command == "revive":
            lab.revive(args.node)
            print(f"node {args.node} revived")
        elif args.lab_command == "freeze":
            stopped = lab.freeze(args.node)
            print(f"node {args.node} frozen ({len(stopped)} processes stopped)")
        elif args.lab_command == "thaw":
            resumed = lab.thaw(args.node)
            print(f"node {args.node} thawed ({len(resumed)} processes resumed)")
        elif args.lab_command == "partition":
            lab.partition(args.node)
            print(f"node {args.node} partitioned: its link is down, everything still runs")
        elif args.lab_command == "heal":
            lab.heal(args.node)
            print(f"node {args.node} healed: its link is up")
        elif args.lab_command == "info":
            info = lab.info()
            print(
                msgspec.json.encode(info).decode()
                if args.output == "json"
                else "\n".join(f"{k}: {v}" for k, v in info.items())
            )
        elif args.lab_command == "exec":
            state = lab.state()
            who = args.who
            if who not in (*state.nodes, "client", "bus"):
                return fail(f"lab exec: unknown node {who!r}", 2)
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                return fail("lab exec: give a command after --", 2)
            return subprocess.call(["ip", "netns", "exec", state.ns(who), *cmd], env=lab.env())
        elif args.lab_command == "demo":
            from ..lab.demo import run_demo

            return run_demo(lab, lab_spec(args), args.nats_servers, secure=not args.insecure)
    except (LabError, config_mod.ConfigError) as exc:
        return fail(f"lab {args.lab_command}: {exc}")
    return 0


def watch_hint(lab: Any, state: LabState) -> str:
    """The `nats` CLI line that watches the lab (its --nkey takes the bundle's seed files)."""
    if not state.secure:
        return f"nats sub -s {state.host_url} 'vigil.>'"
    b = lab.bundle
    return f"nats sub -s {state.host_url} --nkey {b.creds('reader')} --tlsca {b.ca} 'vigil.>'"


def lab_spec(args: argparse.Namespace) -> ClusterSpec:
    from ..lab.specs import generated

    if args.file:
        spec = config_mod.load_file(args.file)
        if args.nodes and args.nodes != len(spec.nodes):
            raise config_mod.ConfigError(
                "nodes", f"{args.file} has {len(spec.nodes)} nodes, not {args.nodes}"
            )
        return spec
    if args.nodes:
        return generated(args.nodes)
    return config_mod.load_file(EXAMPLE)


# -- the parser ----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigil", description="Vigil: cooperative resource groups")
    sub = p.add_subparsers(dest="command", required=True)

    def with_nats(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--nats",
            help="NATS URL(s), comma-separated (default: $VIGIL_NATS_URL, "
            "the running lab, or nats://127.0.0.1:4222)",
        )
        sp.add_argument(
            "--creds", help="nkey seed or .creds file (default: $VIGIL_CREDS; none: anonymous)"
        )
        sp.add_argument("--tls-ca", help="CA of the servers' certificates ($VIGIL_TLS_CA)")
        sp.add_argument("--tls-cert", help="client certificate, if asked ($VIGIL_TLS_CERT)")
        sp.add_argument("--tls-key", help="its key ($VIGIL_TLS_KEY)")
        return sp

    v = sub.add_parser("validate", help="check a cluster file; change nothing")
    v.add_argument("-f", "--file", required=True)
    v.set_defaults(func=cmd_validate)
    a = with_nats(sub.add_parser("apply", help="validate and store a cluster file on the bus"))
    a.add_argument("-f", "--file", required=True)
    a.set_defaults(func=cmd_apply, prefix="vlab")
    s = with_nats(sub.add_parser("status", help="nodes and groups, as the bus sees them"))
    s.add_argument("-o", "--output", choices=["table", "json"], default="table")
    s.set_defaults(func=cmd_status, prefix="vlab")

    ep = with_nats(sub.add_parser("endpoints", help="live endpoints of a service"))
    ep.add_argument("service")
    ep.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ep.set_defaults(func=cmd_endpoints, prefix="vlab")
    ev = with_nats(sub.add_parser("events", help="what happened: the event history"))
    ev.add_argument("--since", help="only events younger than this, e.g. 10m")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    ev.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ev.set_defaults(func=cmd_events, prefix="vlab")
    sw = with_nats(sub.add_parser("switchover", help="planned move of a group to another node"))
    sw.add_argument("group")
    sw.add_argument("--to", help="target node (default: the next live node in its list)")
    sw.set_defaults(func=cmd_intent, prefix="vlab")
    ht = with_nats(sub.add_parser("halt", help="stop a group (halt method); it stays halted"))
    ht.add_argument("group")
    ht.add_argument(
        "--keep-address",
        action="store_true",
        help="keep its address up (offline: clients are refused at once)",
    )
    ht.set_defaults(func=cmd_intent, prefix="vlab")
    rn = with_nats(sub.add_parser("run", help="run a halted or offline group again"))
    rn.add_argument("group")
    rn.set_defaults(func=cmd_intent, prefix="vlab")
    en = with_nats(
        sub.add_parser("enable", help="re-enable switching for a group, forget its failures")
    )
    en.add_argument("group")
    en.set_defaults(func=cmd_intent, prefix="vlab")

    lg = with_nats(sub.add_parser("logs", help="the tail of a group's application log"))
    lg.add_argument("group")
    lg.add_argument("--node", help="ask this node (default: where the group runs)")
    lg.add_argument("-n", "--lines", type=int, default=100)
    lg.set_defaults(func=cmd_logs, prefix="vlab")

    for name, text in (
        ("membership", "run the membership service"),
        ("placement", "run the placement service"),
    ):
        sp = with_nats(sub.add_parser(name, help=text))
        sp.add_argument(
            "--name",
            help="this replica's name in its events' source (default: the host name); "
            "replicas on one host need their own",
        )
        sp.set_defaults(func=cmd_service)
    ad = with_nats(sub.add_parser("address", help="run this node's address service"))
    ad.add_argument("--node", help="this node's name (default: $VIGIL_NODE)")
    ad.add_argument("--interface", help="interface for the addresses (default: from the file)")
    ad.add_argument(
        "--cleanup",
        action="store_true",
        help="remove the VIPs and the nftables table a stopped address service left behind",
    )
    ad.set_defaults(func=cmd_service)
    su = with_nats(sub.add_parser("supervisor", help="run this node's application supervisor"))
    su.add_argument("--node", help="this node's name (default: $VIGIL_NODE)")
    su.add_argument("--state-dir", help="logs and state (default: /var/lib/vigil/NODE)")
    su.set_defaults(func=cmd_service)
    n = sub.add_parser("nats", help="run the embedded NATS server (JetStream on)")
    n.add_argument("--host", default="127.0.0.1")
    n.add_argument("--port", type=int, default=4222)
    n.add_argument("--state-dir", default="/var/lib/vigil/nats")
    n.set_defaults(func=cmd_nats)

    u = with_nats(
        sub.add_parser(
            "up", help="all of Vigil on this machine, supervised; embedded NATS unless --nats"
        )
    )
    u.add_argument("-f", "--file", help="cluster file to apply once running")
    u.add_argument("--node", help="run this node's address service and supervisor too")
    u.add_argument("--interface", help="interface for the addresses (default: from the file)")
    u.add_argument("--state-dir", default="/var/lib/vigil")
    u.add_argument(
        "--nats-servers",
        type=int,
        choices=[1, 3],
        default=3,
        help="embedded NATS servers: 3, a JetStream cluster with R3 (default), or 1",
    )
    u.add_argument(
        "--insecure",
        action="store_true",
        help="embedded NATS without auth or TLS: anyone who reaches it is root here (speed only)",
    )
    u.set_defaults(func=cmd_up)

    sec = sub.add_parser("secure", help="credentials, permissions and TLS for the bus")
    sec_sub = sec.add_subparsers(dest="secure_command", required=True)
    si = sec_sub.add_parser(
        "init", help="write nkeys per role, a server config with permissions, a CA and certs"
    )
    si.add_argument("dir", help="where to write them (created 0700)")
    si.add_argument("-f", "--file", help="take the node names from this cluster file")
    si.add_argument("--nodes", help="node names, comma-separated (instead of -f)")
    si.add_argument(
        "--name",
        action="append",
        default=[],
        help="a DNS name or IP the NATS servers are reached by (repeat; default localhost, "
        "127.0.0.1)",
    )
    si.add_argument("--listen", default="127.0.0.1:4222", help="for the one-server nats.conf")
    si.add_argument(
        "--at",
        help="the absolute path the bundle is mounted at where it is used (a container's "
        "/etc/vigil/secure); written into the server configs (default: DIR)",
    )
    si.add_argument(
        "--group",
        type=int,
        help="numeric group that may read the secrets (0640): unprivileged containers' gid",
    )
    si.add_argument("--force", action="store_true", help="rotate: new keys and server cert")
    si.add_argument("--new-ca", action="store_true", help="with --force: a new CA as well")
    si.set_defaults(func=cmd_secure)

    lab = sub.add_parser("lab", help="a real cluster in network namespaces on this machine")
    lab.add_argument(
        "--prefix",
        default=os.environ.get("VIGIL_LAB", "vlab"),
        help="namespace name prefix (default: vlab)",
    )
    lab.set_defaults(func=cmd_lab)
    ls = lab.add_subparsers(dest="lab_command", required=True)
    for name, text in (
        ("up", "build the lab, start everything, apply the file"),
        ("demo", "build a lab, fail a node over, print the timeline, remove it"),
    ):
        sp = ls.add_parser(name, help=text)
        sp.add_argument("-f", "--file", help="cluster file (default: examples/lab.yaml)")
        sp.add_argument("--nodes", type=int, help="number of nodes (generates a file if no -f)")
        sp.add_argument(
            "--nats-servers",
            type=int,
            choices=[1, 3],
            default=3,
            help="3: a JetStream cluster, R3 (default, as in production); 1: lighter, faster",
        )
        sp.add_argument(
            "--insecure",
            action="store_true",
            help="no auth, no TLS: anyone who reaches the bus is root on every node (speed only)",
        )
    ls.add_parser("down", help="remove every namespace and process of the lab")
    kill = ls.add_parser(
        "kill",
        help="a node: hard loss (SIGKILL its processes, link down); a process (membership-1, "
        "placement-2, nats-2, n1-address): SIGKILL, restarted by its keeper",
    )
    kill.add_argument("target", help="a node, or a process as 'vigil lab info' names it")
    kill.add_argument(
        "--no-restart", action="store_true", help="keep the process down until 'vigil lab start'"
    )
    ls.add_parser("start", help="start a process held down by 'kill --no-restart'").add_argument(
        "process"
    )
    for name, text in (
        ("revive", "bring a killed node back"),
        ("freeze", "SIGSTOP every process of a node (its kernel still answers)"),
        ("thaw", "SIGCONT every process of a frozen node"),
        ("partition", "take a node's link down with everything running"),
        ("heal", "bring a partitioned node's link back up"),
    ):
        ls.add_parser(name, help=text).add_argument("node")
    info = ls.add_parser("info", help="where the lab's NATS is, its namespaces and logs")
    info.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ex = ls.add_parser("exec", help="run a command in a node's or the client's namespace")
    ex.add_argument("who", help="a node name, 'client' or 'bus'")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
