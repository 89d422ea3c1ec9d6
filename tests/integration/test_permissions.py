"""The permission matrix, enforced by a real nats-server running `vigil secure init`'s config:
for every role, each allowed operation works and each other one is refused by the server.

A refusal is observed, not guessed: the server answers a forbidden publish or subscription with
a permissions violation, which arrives before the PONG of the flush that follows it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from vigil.core import embedded
from vigil.core.bus import Bus, BusError, ensure_stream, kv, replayed
from vigil.core.credentials import Credentials
from vigil.core.subjects import Subjects
from vigil.secure.bundle import Bundle, init

S = Subjects("vsec")
NODES = ["n1", "n2"]
ROLES = ["operator", "reader", "membership", "placement", "node-n1"]


@dataclass(frozen=True)
class Server:
    url: str
    bundle: Bundle


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of each test's own: the matrix writes junk into buckets on purpose."""
    d = tmp_path_factory.mktemp("secure")
    bundle = init(d / "bundle", NODES, subjects=S)
    port = embedded.free_port()
    conf = d / "bundle" / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\ninclude "auth.conf"\n')
    log = (d / "nats.log").open("ab")
    argv = [embedded.server_binary(), "-c", str(conf), "-js", "-sd", str(d / "js")]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        embedded.wait_ready("127.0.0.1", port)
        yield Server(f"nats://127.0.0.1:{port}", bundle)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def as_role(server: Server, role: str) -> Bus:
    creds = Credentials(server.bundle.creds(role), server.bundle.ca)
    return await Bus.connect([server.url], S, role, persistent=False, credentials=creds)


@pytest.fixture
async def buses(server: Server) -> AsyncIterator[dict[str, Bus]]:
    out = {role: await as_role(server, role) for role in ROLES}
    out["n2-heart"] = await as_role(server, "node-n2")
    # the operator sets the bus up: every bucket and the event stream
    await ensure_stream(out["operator"])
    for bucket in S.all_buckets:
        await kv(out["operator"], bucket)
    try:
        yield out
    finally:
        for bus in out.values():
            await bus.close()


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


PUBLISH = {
    "heartbeat n1": S.heartbeat("n1"),
    "heartbeat n2": S.heartbeat("n2"),
    "address event n1": S.address("n1", "web1", "acquired"),
    "address event n2": S.address("n2", "web1", "acquired"),
    "app event n1": S.app("n1", "web1", "started"),
    "app event n2": S.app("n2", "web1", "started"),
    "service up n1": S.service("web", "up", "n1"),
    "service up n2": S.service("web", "up", "n2"),
    "service down n2": S.service("web", "down", "n2"),
    "node lost": S.node_lost("n1"),
    "placement decided": S.placement("web1"),
    "alert": S.alert("web1"),
    "node fenced": S.node_fenced("n1"),
    "config applied": S.config_applied,
    "intent changed": S.intent("web1"),
    "logs request n1": S.logs_request("n1"),
    "kv config": kv_subject(S.bucket_config, "cluster"),
    "kv intents": kv_subject(S.bucket_intents, "web1"),
    "kv nodes": kv_subject(S.bucket_nodes, "n1"),
    "kv leases": kv_subject(S.bucket_leases, "n1"),
    "move the leases leader": f"$JS.API.STREAM.LEADER.STEPDOWN.KV_{S.bucket_leases}",
    "move the nodes leader": f"$JS.API.STREAM.LEADER.STEPDOWN.KV_{S.bucket_nodes}",
    "kv placement": kv_subject(S.bucket_placement, "web1"),
    "kv services": kv_subject(S.bucket_services, "web"),
    "kv fencing": kv_subject(S.bucket_fencing, "n1.3"),
    "kv observed address n1": kv_subject(S.bucket_observed, "address.n1.web1"),
    "kv observed app n1": kv_subject(S.bucket_observed, "app.n1.web1"),
    "kv observed address n2": kv_subject(S.bucket_observed, "address.n2.web1"),
    "kv observed app n2": kv_subject(S.bucket_observed, "app.n2.web1"),
    "delete a bucket": f"$JS.API.STREAM.DELETE.KV_{S.bucket_config}",
    "purge the events": f"$JS.API.STREAM.PURGE.{S.stream}",
    "create another stream": "$JS.API.STREAM.CREATE.EVIL",
}
MAY_PUBLISH = {
    "node-n1": {
        "heartbeat n1",
        "address event n1",
        "app event n1",
        "service up n1",
        "kv observed address n1",
        "kv observed app n1",
    },
    "membership": {"node lost", "kv nodes", "kv leases", "move the leases leader"},
    "placement": {
        "placement decided",
        "alert",
        "node fenced",
        "service down n2",
        "kv placement",
        "kv services",
        "kv fencing",
    },
    "operator": {"config applied", "intent changed", "logs request n1", "kv config", "kv intents"},
    "reader": set(),
}
SUBSCRIBE = {
    "every event": f"{S.root}.>",
    "placements": S.all_placements,
    "app events of n2": S.all_app_events("n2"),
    "heartbeats": S.all_heartbeats,
    "logs requests n1": S.logs_request("n1"),
    "logs requests n2": S.logs_request("n2"),
    "every inbox": "_INBOX.>",
}
MAY_SUBSCRIBE = {
    "node-n1": {"placements", "logs requests n1"},
    "membership": {"heartbeats"},
    "placement": {"app events of n2"},
    "operator": {"every event", "placements", "app events of n2"},
    "reader": {"every event", "placements", "app events of n2"},
}


def denied_subjects(bus: Bus) -> set[str]:
    """Subjects the server reported a violation for (nats-py lowercases the message)."""
    return {d.rsplit('"', 2)[1] for d in bus.denied if d.count('"') >= 2}


async def refusals(bus: Bus, act: str, subjects: dict[str, str], expected: int) -> set[str]:
    """Try every subject, then round trips until the server has answered for all of them (its
    violations are counted as they arrive; the deadline bounds a wrong expectation)."""
    bus.denied.clear()
    subs = []
    for subject in subjects.values():
        if act == "pub":
            await bus.nc.publish(subject, b"{}")
        else:
            subs.append(await bus.nc.subscribe(subject))
    for _ in range(20):
        await bus.nc.flush(timeout=5)
        if len(bus.denied) >= expected:
            break
    await bus.nc.flush(timeout=5)
    for sub in subs:
        await sub.unsubscribe()
    lowered = denied_subjects(bus)
    return {name for name, subject in subjects.items() if subject.lower() in lowered}


@pytest.mark.parametrize("role", ROLES)
async def test_publish_matrix(buses: dict[str, Bus], role: str) -> None:
    forbidden = set(PUBLISH) - MAY_PUBLISH[role]
    assert await refusals(buses[role], "pub", PUBLISH, len(forbidden)) == forbidden


@pytest.mark.parametrize("role", ROLES)
async def test_subscribe_matrix(buses: dict[str, Bus], role: str) -> None:
    forbidden = set(SUBSCRIBE) - MAY_SUBSCRIBE[role]
    assert await refusals(buses[role], "sub", SUBSCRIBE, len(forbidden)) == forbidden


async def test_allowed_kv_operations_work_end_to_end(buses: dict[str, Bus]) -> None:
    """The real calls the services make: puts answered with a revision, gets and watches."""
    op, n1 = buses["operator"], buses["node-n1"]
    config = await kv(op, S.bucket_config)
    assert await config.put("cluster", b'{"x": 1}') > 0
    observed = await kv(n1, S.bucket_observed)
    assert await observed.put("address.n1.web1", b"{}") > 0
    for role in ROLES:  # everyone may read what they need: the config, the observed state
        bus = buses[role]
        assert (await (await kv(bus, S.bucket_config)).get("cluster")).value == b'{"x": 1}'
        watcher = await (await kv(bus, S.bucket_observed)).watch("address.n1.>")
        first = await watcher.updates(timeout=5)
        assert first is not None and first.key == "address.n1.web1"
        await watcher.stop()
        assert bus.denied == [], role
    nodes = await kv(buses["membership"], S.bucket_nodes)
    assert await nodes.put("n1", b"{}") > 0
    placement = await kv(buses["placement"], S.bucket_placement)
    assert await placement.create("web9", b"{}") > 0


async def test_anonymous_and_unknown_clients_are_refused(server: Server, tmp_path: Path) -> None:
    with pytest.raises(BusError, match="authorization failed"):
        await Bus.connect(
            [server.url], S, "x", persistent=False, credentials=Credentials(tls_ca=server.bundle.ca)
        )
    other = init(tmp_path / "other", NODES, subjects=S)  # valid-looking keys the server never saw
    with pytest.raises(BusError, match="authorization failed"):
        await Bus.connect(
            [server.url],
            S,
            "x",
            persistent=False,
            credentials=Credentials(other.creds("operator"), server.bundle.ca),
        )
    with pytest.raises(BusError, match="TLS failed"):  # our CA is nobody's default
        await Bus.connect(
            [server.url], S, "x", persistent=False, credentials=Credentials(other.creds("reader"))
        )


async def test_a_tls_url_never_goes_plaintext(nats_url: str) -> None:
    plain = nats_url.replace("nats://", "tls://")
    with pytest.raises(BusError, match=r"does not offer TLS|TLS failed"):
        await Bus.connect([plain], S, "x", persistent=False, credentials=Credentials())


def vigil(server: Server, role: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VIGIL_ROOT": S.root,
        "VIGIL_NATS_URL": server.url,
        "VIGIL_CREDS": str(server.bundle.creds(role)),
        "VIGIL_TLS_CA": str(server.bundle.ca),
    }
    cli = [sys.executable, "-m", "vigil.cli.main", *argv]
    return subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)


def test_the_cli_with_operator_and_reader_credentials(server: Server, tmp_path: Path) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "cluster: {name: sec}\nnodes: [{name: n1}, {name: n2}]\ngroups:\n"
        "  - {name: web1, address: 10.9.0.10/24, preferred: n1, app: {command: sleep 9}}\n"
    )
    done = vigil(server, "operator", "apply", "-f", str(cluster))
    assert done.returncode == 0, done.stderr

    async def services_started() -> None:  # membership and placement create the other buckets
        bus = await as_role(server, "placement")
        for bucket in S.all_buckets:
            await kv(bus, bucket)
        await bus.close()

    asyncio.run(services_started())
    assert vigil(server, "reader", "status").returncode == 0
    refused = vigil(server, "reader", "apply", "-f", str(cluster))
    assert refused.returncode == 1
    assert "not authorized" in refused.stderr and "\n" not in refused.stderr.strip()
    halted = vigil(server, "reader", "halt", "web1")
    assert halted.returncode == 1 and "not authorized" in halted.stderr


async def test_a_node_cannot_forge_heartbeats_through_a_consumer(buses: dict[str, Bus]) -> None:
    """n1 may write its own observed keys and create consumers to watch buckets, and the server
    lets it aim a push consumer at n2's heartbeat subject. What arrives there is recognisably a
    replay (the stored subject, a JetStream ack reply), which membership drops: only n2's own
    heartbeat counts."""
    n1 = buses["node-n1"]
    seen: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        await seen.put(msg)

    await buses["membership"].nc.subscribe(S.heartbeat("n2"), cb=on_beat)
    await buses["membership"].nc.flush()
    observed = await kv(n1, S.bucket_observed)
    await observed.put("app.n1.forged", b"forged")
    request = {
        "stream_name": f"KV_{S.bucket_observed}",
        "config": {
            "deliver_subject": S.heartbeat("n2"),
            "filter_subject": f"$KV.{S.bucket_observed}.app.n1.forged",
            "ack_policy": "none",
            "deliver_policy": "all",
        },
    }
    await n1.nc.request(
        f"$JS.API.CONSUMER.CREATE.KV_{S.bucket_observed}", json.dumps(request).encode(), timeout=5
    )
    await buses["n2-heart"].nc.publish(S.heartbeat("n2"), b"real")
    counted = []
    while True:
        msg = await asyncio.wait_for(seen.get(), 5)
        if not replayed(msg):
            break
        counted.append(msg.data)
    assert (msg.subject, msg.data) == (S.heartbeat("n2"), b"real")
    assert all(data == b"forged" for data in counted)


async def test_membership_and_placement_work_with_their_own_credentials(server: Server) -> None:
    """The real services on a secured bus, each with only its role's permissions: nodes join,
    a group is placed, a node is lost and the group moves. Nothing they do is refused."""
    from vigil.client import ServiceClient
    from vigil.core.clusterconfig import store
    from vigil.membership.service import Membership
    from vigil.placement.service import PlacementService
    from vigil.wire.events import NodeJoined, NodeLost, PlacementDecided

    from .conftest import Hearts, group, make_spec, of, record

    # the generated permissions name the root, so this runs on S, with a group of its own
    operator = await as_role(server, "operator")
    member = await as_role(server, "membership")
    place = await as_role(server, "placement")
    reader = await as_role(server, "reader")
    nodes = {n: await as_role(server, f"node-{n}") for n in NODES}
    everyone = [operator, member, place, reader, *nodes.values()]
    tasks: list[asyncio.Task[None]] = []
    try:
        rec = await record(reader.nc, S.all_events)
        await store(operator, make_spec(NODES, [group("chain", "10.9.0.20/24", "n1", ["n2"])]))
        tasks.append(asyncio.create_task(Membership(member).run(), name="membership"))
        tasks.append(asyncio.create_task(PlacementService(place).run(), name="placement"))
        hearts = {n: Hearts(bus.nc, S) for n, bus in nodes.items()}
        for n, h in hearts.items():
            h.beating.add(n)
            tasks.append(asyncio.create_task(h.run(), name=f"hearts-{n}"))
        await rec.expect(of(NodeJoined, node="n1"))
        await rec.expect(of(NodeJoined, node="n2"))
        await rec.expect(of(PlacementDecided, group="chain", node="n1"))
        hearts["n1"].beating.clear()
        await rec.expect(of(NodeLost, node="n1"))
        moved = await rec.expect(of(PlacementDecided, group="chain", node="n2"))
        assert moved.previous == "n1"
        assert [bus.denied for bus in everyone] == [[] for _ in everyone]
        # an application following the group's service with the reader's credentials
        creds = Credentials(server.bundle.creds("reader"), server.bundle.ca)
        async with ServiceClient([server.url], "chain", root=S.root, credentials=creds) as app:
            assert app._bus is not None
            await app._bus.nc.flush()
            assert app._bus.denied == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bus in everyone:
            await bus.close()


def test_a_password_in_the_url_is_refused_and_never_printed(server: Server) -> None:
    url = server.url.replace("nats://", "nats://bob:hunter2@")
    env = {**os.environ, "VIGIL_ROOT": S.root, "VIGIL_TLS_CA": str(server.bundle.ca)}
    env.pop("VIGIL_CREDS", None)
    cli = [sys.executable, "-m", "vigil.cli.main", "status", "--nats", url]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "authorization failed" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "nats://***@127.0.0.1" in done.stderr
