"""Scale: many groups re-placed at once, and how the cost grows."""

from __future__ import annotations

from ..scale import ScaleCase
from ..stats import fmt_ms
from .common import (
    Results,
    Row,
    p50,
    table,
    usage_cell,
)


def section_scale(res: Results) -> list[str]:
    if not res.scale:
        return []
    out = [
        "## 3. Control-plane scale",
        "",
        "No namespaces: one nats-server, the real membership and placement services as "
        "processes, and simulated node agents (`bench/simagent.py`: a process per 50 nodes, "
        "each node an asyncio task that heartbeats every 200 ms like the address service and "
        "acknowledges a placement for its node like the address service and the supervisor "
        "do: `AddressAcquired` + `AddressStatus(held)` in the observed bucket, `AppStarted` + "
        "`ServiceUp` + `AppStatus(running)`). Default timing (200 / 800 ms). `spread`: group i "
        "prefers node i mod N; `concentrated`: every group prefers n1 and fails over to the "
        "others round-robin (the target's case: 1,000 groups on the lost node). A failover = "
        "one node stops heartbeating and acknowledging.",
        "",
    ]
    rows: list[Row] = []
    for c in res.scale:
        if c.error and not c.runs:
            rows.append((c.nodes, c.groups, c.layout, "-", "ERROR", c.error, "", "", "", ""))
            continue
        runs = c.runs
        msgs = p50(sum(r.events.values()) for r in runs)
        unfinished = [r for r in runs if r.error]
        if unfinished:
            r = unfinished[0]
            decided = f"unfinished: {r.replaced} of {r.affected} after {r.window_s:.0f} s"
            acked = f"unfinished: {r.acknowledged} of {r.affected}"
        else:
            decided = fmt_ms(p50(r.all_decided_s for r in runs))
            acked = fmt_ms(p50(r.all_acked_s for r in runs))
        rows.append((
            c.nodes, c.groups, c.layout, f"{p50(r.affected for r in runs):.0f}", len(runs),
            fmt_ms(p50(r.detection_s for r in runs)),
            fmt_ms(p50(r.first_decided_s for r in runs)),
            decided,
            acked,
            f"{msgs:.0f}",
        ))  # fmt: skip
    out += table(
        [
            "nodes",
            "groups",
            "layout",
            "groups on the lost node",
            "runs",
            "detection (ms)",
            "first re-placed (ms after node_lost)",
            "all re-placed (ms)",
            "all acknowledged (ms)",
            "events on vigil.> per failover",
        ],
        rows,
    )
    out += [
        "",
        "Values are p50 over the runs (different victims, each holding its initial "
        "share of groups; concentrated: a fresh control plane per run).",
        "",
    ]
    rows = []
    for c in res.scale:
        for r in c.runs[:1]:
            per = r.affected or 1
            ctl = r.server_in - r.heartbeats
            rows.append(
                (
                    f"{c.nodes} / {c.groups} {c.layout}",
                    r.affected,
                    ", ".join(f"{k} {v}" for k, v in sorted(r.events.items())),
                    f"{ctl} ({ctl / per:.1f} per group)",
                    f"{r.server_out} ({r.server_out / per:.1f} per group)",
                    f"{r.placement_in} / {r.placement_out}",
                )
            )
    out += [
        "NATS messages of one failover, counted by the server (`/varz`, `/connz`) over the "
        "window from the silence to 0.5 s after the last acknowledgement; heartbeats "
        "(estimated from the window) are subtracted from both counts, and the bench's own "
        "observer subscription from what the server delivered. For a failover that moves one "
        "or ten groups the error of the heartbeat estimate is larger than the count itself:",
        "",
    ]
    out += table(
        [
            "nodes / groups",
            "groups moved",
            "events on vigil.>",
            "published by clients",
            "delivered by the server",
            "placement in / out",
        ],
        rows,
    )
    fanout = [c for c in res.scale if c.runs]
    if fanout:
        c = max(fanout, key=lambda c: c.nodes * max(r.affected for r in c.runs))
        k = max(r.affected for r in c.runs)
        out += [
            "",
            f"Not reproduced by the simulation: in a real cluster every node's address "
            f"service and supervisor each subscribe to every placement decision and each "
            f"watch the whole placement bucket, so a decision is delivered about "
            f"4 x nodes times: for {c.nodes} nodes and {k} groups moved that is about "
            f"{4 * c.nodes * k:,} deliveries, most of them to nodes the decision is not "
            f"about.",
            "",
        ]
    out += [
        "### Resources at idle",
        "",
        "CPU (percent of one core) / RSS over an idle window after every group is placed "
        "and acknowledged. `agents` are the simulator's processes (not Vigil).",
        "",
    ]
    rows = []
    for c in res.scale:
        agents = [u for role, u in c.idle.items() if role.startswith("agents-")]
        ag = (
            f"{sum(u.cpu_pct for u in agents):.1f} % / {sum(u.rss_mib for u in agents):.0f} MiB"
            if agents
            else "n/a"
        )
        rows.append(
            (
                f"{c.nodes} / {c.groups} {c.layout}",
                usage_cell(c.idle.get("membership")),
                usage_cell(c.idle.get("placement")),
                usage_cell(c.idle.get("nats-server")),
                ag,
                f"{c.config_bytes / 1e6:.2f} MB"
                + (f" (max_payload {c.max_payload})" if "default" not in c.max_payload else ""),
            )
        )
    out += [
        *table(
            [
                "nodes / groups",
                "membership",
                "placement",
                "nats-server",
                "simulated agents",
                "cluster file",
            ],
            rows,
        ),
        "",
    ]
    out += growth(res.scale)
    polled = [c for c in res.scale if c.idle_poll]
    if polled:
        out += [
            "### The cluster file, re-read every second by every node",
            "",
            "Every node's address service and supervisor re-read the whole cluster file "
            "from the config bucket every second (`ConfigSource.refresh` in their resync "
            "tick; membership every 3 s, placement every 1 s), then compare revisions. "
            "With the simulated agents doing the same (2 reads per node per second):",
            "",
        ]
        rows = []
        for c in polled:
            want = 2 * c.nodes
            rows.append(
                (
                    f"{c.nodes} / {c.groups} {c.layout}",
                    f"{c.config_bytes / 1e6:.2f} MB",
                    f"{c.poll_rate:.0f} of {want}",
                    f"{c.poll_bytes_s / 1e6:.0f} MB/s",
                    usage_cell(c.idle_poll.get("nats-server")),
                    usage_cell(c.idle.get("nats-server")),
                )
            )
        out += [
            *table(
                [
                    "nodes / groups",
                    "cluster file",
                    "reads/s achieved",
                    "server out",
                    "nats-server while polling",
                    "nats-server without",
                ],
                rows,
            ),
            "",
        ]
    notes = [n for c in res.scale for n in c.notes] + [
        f"{c.nodes} / {c.groups} {c.layout}: {c.error}" for c in res.scale if c.error
    ]
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return out


def growth(cases: list[ScaleCase]) -> list[str]:
    def find(n: int, g: int, lay: str = "spread") -> ScaleCase | None:
        return next(
            (c for c in cases if c.nodes == n and c.groups == g and c.layout == lay and c.idle),
            None,
        )

    out: list[str] = []
    a, b = find(10, 1000), find(100, 1000)
    if a and b:
        out += ["**10 -> 100 nodes** (1,000 groups, spread):", ""]
        rows: list[Row] = []
        for role in ("membership", "placement", "nats-server"):
            ua, ub = a.idle.get(role), b.idle.get(role)
            if ua and ub:
                rows.append(
                    (
                        role,
                        f"{ua.cpu_pct:.1f} -> {ub.cpu_pct:.1f} %",
                        f"{(ub.cpu_pct - ua.cpu_pct) / 90 * 1000:.1f} m% per node",
                        f"{ua.rss_mib:.0f} -> {ub.rss_mib:.0f} MiB",
                        f"{(ub.rss_mib - ua.rss_mib) / 90 * 1024:.0f} KiB per node",
                    )
                )
        out += table(["process", "CPU at idle", "per added node", "RSS", "per added node"], rows)
        out += [""]
    g = [c for c in (find(100, 100), find(100, 1000), find(100, 10000)) if c]
    if len(g) >= 2:
        out += ["**100 -> 10,000 groups** (100 nodes, spread):", ""]
        rows = []
        for c in g:
            rows.append(
                (
                    c.groups,
                    usage_cell(c.idle.get("membership")),
                    usage_cell(c.idle.get("placement")),
                    usage_cell(c.idle.get("nats-server")),
                    f"{c.startup_s:.1f} s",
                    fmt_ms(p50(r.all_decided_s for r in c.runs)),
                )
            )
        out += table(
            [
                "groups",
                "membership",
                "placement",
                "nats-server",
                "initial placement, all acknowledged",
                "failover: all re-placed (ms)",
            ],
            rows,
        )
        out += [""]
    return out
