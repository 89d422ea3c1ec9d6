"""Fencing against a real nats-server: two placement replicas and a fence agent (a script that
records its stdin and exits with the code in a file). A lost node's restart group runs elsewhere
only once the agent has powered the node off; a failing agent raises an alert and the group
waits, until the agent works again.
"""

from __future__ import annotations

import stat
from pathlib import Path

from nats.aio.client import Client

from vigil.core import status
from vigil.core.bus import get_record, kv
from vigil.core.clusterconfig import store
from vigil.core.config import load_data
from vigil.core.subjects import Subjects, fence_key
from vigil.testing.waiting import wait_until
from vigil.wire.events import Alert, NodeFenced, PlacementDecided
from vigil.wire.records import FenceRecord, Placement

from .conftest import Services, group, of, record
from .test_placement import NODES, Cluster, ProbedPlacement

SECRET = "s3cret-pw"


def agent(tmp_path: Path) -> Path:
    script = tmp_path / "fence_test"
    script.write_text(
        "#!/bin/sh\n"
        'input=$(cat); rc=$(cat "$0.rc")\n'
        'printf "%s\\nrc=%s\\n--\\n" "$input" "$rc" >> "$0.calls"\n'
        'echo "login with $(echo "$input" | grep password) refused" >&2\n'
        'exit "$rc"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def set_exit(script: Path, code: int) -> None:
    Path(f"{script}.rc").write_text(str(code))


def calls(script: Path) -> list[str]:
    path = Path(f"{script}.calls")
    return path.read_text().split("--\n")[:-1] if path.exists() else []


async def test_a_lost_nodes_restart_group_waits_for_its_fence(
    client: Client, services: Services, subjects: Subjects, tmp_path: Path
) -> None:
    s = subjects
    script = agent(tmp_path)
    set_exit(script, 1)
    spec = load_data(
        {
            "cluster": {
                "name": "it",
                "timing": {"heartbeat": "50ms", "lease": "250ms"},
                "fence": {
                    "agent": str(script),
                    "options": {"plug": "{node}", "password": SECRET},
                    "timeout": "5s",
                },
            },
            "nodes": [{"name": n} for n in NODES],
            "groups": [group("web1", "10.213.78.1/24", "n1", ["n2", "n3"])],
        }
    )
    cli = await services.bus("cli", "test")
    await store(cli, spec)
    cluster = Cluster(client, s, await kv(cli, s.bucket_nodes))
    for n in NODES:
        await cluster.set_node(n, "up")
    decisions = await record(client, s.all_placements)
    events = await record(client, f"{s.root}.>")
    for i in range(2):  # two replicas: the agent runs once per attempt, never twice at once
        p = ProbedPlacement(await services.bus("placement", f"p{i + 1}"))
        services.spawn(p.run(), f"placement-p{i + 1}")
    await decisions.expect(of(PlacementDecided, group="web1", node="n1", epoch=1))
    bucket = await kv(cli, s.bucket_placement)
    fencing = await kv(cli, s.bucket_fencing)

    await cluster.set_node("n1", "lost")
    alert: Alert = await events.expect(of(Alert, kind="fence_failed", node="n1"), timeout=10)
    assert "exited with 1" in alert.message and SECRET not in alert.message
    assert "***" in alert.message  # the agent's stderr, its password masked

    async def waiting_reason() -> bool:
        p = await get_record(bucket, "web1", Placement)
        return p is not None and "fence failed" in p.reason

    await wait_until(waiting_reason, timeout=10, what="the failure in the group's reason")
    held = await get_record(bucket, "web1", Placement)
    assert held is not None and (held.node, held.epoch) == ("n1", 1)  # not placed elsewhere
    assert SECRET not in held.reason
    view = (await status.read(cli)).group("web1")
    assert view is not None and "waiting for it to be fenced" in view.waiting
    failed = await get_record(fencing, fence_key("n1", 0), FenceRecord)
    assert failed is not None and not failed.fenced and failed.attempts >= 1
    assert SECRET not in failed.error

    set_exit(script, 0)  # the BMC answers again
    fenced: NodeFenced = await events.expect(of(NodeFenced, node="n1"), timeout=15)
    assert fenced.incarnation == 0
    moved: PlacementDecided = await decisions.expect(
        of(PlacementDecided, group="web1", node="n2", epoch=2)
    )
    assert moved.reason == "node n1 lost"
    record_ = await get_record(fencing, fence_key("n1", 0), FenceRecord)
    assert record_ is not None and record_.fenced
    runs = calls(script)
    assert all(c.startswith(f"action=off\nplug=n1\npassword={SECRET}\n") for c in runs), runs
    assert [c.rsplit("rc=", 1)[1].strip() for c in runs].count("0") == 1  # fenced once
