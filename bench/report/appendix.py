"""The commands that produced the results, and the machine."""

from __future__ import annotations

from ..stats import fmt_ms
from .common import (
    Results,
)


def section_commands(res: Results) -> list[str]:
    out = [
        "## The exact commands",
        "",
        "```",
        f"{res.argv}",
        "```",
        "",
        "Inside it (paths are this run's):",
        "",
        "```",
    ]
    if res.probe_command:
        out.append(f"# the client, in the client namespace\n{res.probe_command}")
    for kr in res.keepalived[:2]:
        out.append(f"# keepalived ({kr.cfg.key}) and the app, per node")
        out += kr.commands
    if res.scale_commands:
        out.append(
            "# control-plane scale: server (with a monitoring port), services, simulated agents"
        )
        out += res.scale_commands
    for lr in res.load[:1]:
        out.append(f"# section 4's busy loop\n{lr.busy_command}")
    out += ["```", ""]
    return out


def appendix(res: Results) -> list[str]:
    out = ["## Appendix: every run (ms)", ""]
    for fr in res.failover:
        out.append(
            f"- Vigil {fr.timing_name}, node loss -> served: "
            + ", ".join(fmt_ms(r.served_s) for r in fr.node_loss)
        )
        out.append(
            f"- Vigil {fr.timing_name}, app crash -> served: "
            + ", ".join(fmt_ms(r.served_s) for r in fr.app_crash)
        )
        if any(r.gap_s is not None for r in fr.switchover):
            out.append(
                f"- Vigil {fr.timing_name}, switchover gap: "
                + ", ".join(fmt_ms(r.gap_s) for r in fr.switchover)
            )
    for kr in res.keepalived:
        out.append(
            f"- {kr.cfg.label}, node loss -> served: "
            + ", ".join(fmt_ms(r.served_s) for r in kr.runs)
        )
    for c in res.scale:
        out.append(
            f"- scale {c.nodes} / {c.groups} {c.layout}, all acknowledged after node_lost: "
            + ", ".join(fmt_ms(r.all_acked_s) for r in c.runs)
        )
    return [*out, ""]
