"""The ``vigil`` command line as a subprocess, against a real nats-server.

Each test gives the subprocess its own subject root through ``VIGIL_ROOT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client

from vigil.core import config as config_mod
from vigil.core import embedded
from vigil.core.bus import encode, kv, now
from vigil.core.subjects import CONFIG_KEY, Subjects, address_key, app_key
from vigil.wire.events import ConfigApplied
from vigil.wire.records import AddressStatus, AppStatus, NodeRecord, Placement

from .conftest import DEADLINE, Services, of, record

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
cluster:
  name: it
  timing: {heartbeat: 50ms, lease: 250ms}
nodes: [{name: n1}, {name: n2}, {name: n3}]
groups:
  - name: web1
    address: 10.213.77.1/24
    preferred: n1
    possible: [n2, n3]
    app: {command: sleep 1000}
  - name: web2
    address: 10.213.77.2/24
    preferred: n2
    possible: [n3, n1]
    app: {command: sleep 1000}
"""
UNKNOWN_NODE = GOOD.replace("preferred: n1", "preferred: n9")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def vigil(*args: str, root: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["VIGIL_ROOT"] = root
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vigil.cli.main",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 3 * DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def cluster_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (UNKNOWN_NODE, "groups[0].preferred: unknown node 'n9'"),
        (GOOD.replace("possible: [n3, n1]", "possible: [n3, n3]"), "groups[1].possible[1]"),
        (GOOD.replace("lease: 250ms", "lease: 150ms"), "cluster.timing.lease: must be at least"),
        (GOOD.replace("10.213.77.2/24", "10.213.77.1/16"), "groups[1].address: 10.213.77.1 is"),
        (GOOD.replace("  name: it\n", "  name: it\n  colour: red\n"), "cluster.colour: unknown"),
        (GOOD.replace("nodes: [{", "nodes: [{{"), "line 4: not valid YAML"),
    ],
    ids=["unknown-node", "listed-twice", "short-lease", "same-address", "unknown-key", "yaml"],
)
async def test_validate_names_the_bad_field_in_one_line(
    tmp_path: Path, subjects: Subjects, text: str, message: str
) -> None:
    path = cluster_file(tmp_path, "bad.yaml", text)
    result = await vigil("validate", "-f", path, root=subjects.root)
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vigil: {path}: {message}"), lines[0]


async def test_validate_a_good_file(tmp_path: Path, subjects: Subjects) -> None:
    result = await vigil("validate", "-f", cluster_file(tmp_path, "good.yaml", GOOD), root="x")
    assert (result.code, result.stderr) == (0, "")
    assert result.stdout.strip().endswith("valid (3 nodes, 2 groups)")


async def test_apply_of_a_bad_file_changes_nothing(
    tmp_path: Path, nats_url: str, client: Client, services: Services, subjects: Subjects
) -> None:
    s = subjects
    applied = await record(client, s.config_applied)
    good = await vigil(
        "apply", "-f", cluster_file(tmp_path, "good.yaml", GOOD), "--nats", nats_url, root=s.root
    )
    assert good.code == 0, good.stderr
    m = re.search(r"as revision (\d+)$", good.stdout.strip())
    assert m is not None, good.stdout
    revision = int(m.group(1))
    event = await applied.expect(of(ConfigApplied, revision=revision))
    assert (event.cluster, event.nodes, event.groups) == ("it", 3, 2)

    bus = await services.bus("cli", "test")
    bucket = await kv(bus, s.bucket_config)
    before = await bucket.get(CONFIG_KEY)
    assert before.revision == revision
    assert config_mod.decode(before.value or b"") == config_mod.load_text(GOOD)

    path = cluster_file(tmp_path, "bad.yaml", UNKNOWN_NODE)
    bad = await vigil("apply", "-f", path, "--nats", nats_url, root=s.root)
    assert bad.code == 1
    assert bad.stderr.splitlines() == [
        f"vigil: {path}: groups[0].preferred: unknown node 'n9' (nothing applied)"
    ]
    after = await bucket.get(CONFIG_KEY)
    assert (after.revision, after.value) == (before.revision, before.value)
    status = await bucket.status()
    assert status.values == 1  # no second revision hidden in the history either
    await applied.none_within(of(ConfigApplied), since=applied.after(event), timeout=0.2)


async def test_apply_then_status_as_json(
    tmp_path: Path, nats_url: str, services: Services, subjects: Subjects
) -> None:
    s = subjects
    applied = await vigil(
        "apply", "-f", cluster_file(tmp_path, "good.yaml", GOOD), "--nats", nats_url, root=s.root
    )
    assert applied.code == 0, applied.stderr

    # What membership, placement, address and supervisor would have written by now.
    bus = await services.bus("cli", "test")
    nodes = await kv(bus, s.bucket_nodes)
    await nodes.put("n1", encode(NodeRecord("n1", "up", now())))
    await nodes.put("n2", encode(NodeRecord("n2", "lost", now())))
    await nodes.put("n3", encode(NodeRecord("n3", "up", now())))
    placement = await kv(bus, s.bucket_placement)
    await placement.put("web1", encode(Placement("web1", "n1", 1, "preferred node up")))
    await placement.put("web2", encode(Placement("web2", "n3", 2, "node n2 lost")))
    observed = await kv(bus, s.bucket_observed)
    await observed.put(
        address_key("n1", "web1"), encode(AddressStatus("web1", "n1", "10.213.77.1/24", True, 1))
    )
    await observed.put(app_key("n1", "web1"), encode(AppStatus("web1", "n1", True, 1, pid=42)))
    await observed.put(
        address_key("n3", "web2"), encode(AddressStatus("web2", "n3", "10.213.77.2/24", True, 2))
    )

    result = await vigil("status", "-o", "json", "--nats", nats_url, root=s.root)
    assert result.code == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["cluster"] == "it"
    assert view["nodes"] == [
        {"name": "n1", "state": "up"},
        {"name": "n2", "state": "lost"},
        {"name": "n3", "state": "up"},
    ]
    groups = [
        {k: g[k] for k in ("name", "node", "mode", "address", "epoch")} for g in view["groups"]
    ]
    assert groups == [
        {"name": "web1", "node": "n1", "mode": "normal", "address": "10.213.77.1/24", "epoch": 1},
        # on a possible node, address up but app not (yet) running: clients get a refusal
        {"name": "web2", "node": "n3", "mode": "offline", "address": "10.213.77.2/24", "epoch": 2},
    ]


async def test_status_of_a_root_with_nothing_applied(nats_url: str, subjects: Subjects) -> None:
    result = await vigil("status", "-o", "json", "--nats", nats_url, root=subjects.root)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {"cluster": None, "nodes": [], "groups": []}


async def test_apply_without_nats_fails_with_one_line(tmp_path: Path, subjects: Subjects) -> None:
    nowhere = f"nats://127.0.0.1:{embedded.free_port()}"  # nothing listens there
    path = cluster_file(tmp_path, "good.yaml", GOOD)
    result = await vigil("apply", "-f", path, "--nats", nowhere, root=subjects.root)
    assert result.code == 1
    assert result.stderr.splitlines() == [
        f"vigil: cannot reach NATS at {nowhere}: nats: no servers available for connection"
    ]
