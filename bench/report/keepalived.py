"""keepalived under the same client and the same faults: the anchor."""

from __future__ import annotations

from ..stats import Summary, fmt_ms, ratio
from .common import (
    Results,
    Row,
    address_up,
    ka_served,
    mean,
    served,
    table,
)


def section_keepalived(res: Results) -> list[str]:
    if not res.keepalived:
        return []
    out = [
        "## 2. keepalived side by side",
        "",
        "Same run, same topology (the lab's own network code: bridge namespace, two node "
        "namespaces with eth0 on the bridge, a client namespace, same addresses and ARP "
        "sysctls), same client probe, same kill (`bench/netfault.py`: SIGKILL of keepalived's "
        "whole process group and of everything else in the node's namespace, then link down). "
        "Each node runs keepalived (`--vrrp`, both `state BACKUP`, priority 100, `nopreempt`, "
        "so a revived node stays backup and each run kills the current master) and the lab's "
        "demo app bound to 0.0.0.0. Before a victim's link comes back up, the VIP its kernel "
        "kept is deleted (otherwise two nodes would hold it). Fresh pid file names per start. "
        "The kill comes 0.3 s plus a random delay of up to one advert_int after the client's "
        "first answer: the revival and the settling are otherwise in step with the master's "
        "adverts, which would pin every run to the same phase.",
        "",
    ]
    rows: list[Row] = []
    for kr in res.keepalived:
        s = ka_served(kr)
        m = Summary.of([r.master_s for r in kr.runs if r.master_s is not None])
        rows.append((kr.cfg.label, s.n, s.ms(), m.ms()))
    out += [
        *table(
            [
                "config",
                "runs",
                "node loss -> served: min / p50 / p90 / max (ms)",
                "survivor logs MASTER: min / p50 / p90 / max (ms)",
            ],
            rows,
        ),
        "",
    ]
    rows2: list[Row] = []
    for fr in res.failover:
        for kr in res.keepalived:
            a, b = served(fr), ka_served(kr)
            up_v = mean(address_up(fr))
            up_k = mean(r.master_s for r in kr.runs)
            rows2.append(
                (
                    f"Vigil {fr.timing_name}",
                    kr.cfg.label,
                    ratio(a.p50, b.p50),
                    ratio(a.p90, b.p90),
                    ratio(
                        mean(r.served_s for r in fr.node_loss), mean(r.served_s for r in kr.runs)
                    ),
                    f"{ratio(up_v, up_k)} ({fmt_ms(up_v)} / {fmt_ms(up_k)})",
                )
            )
    out += ["Ratio Vigil / keepalived (below 1 means Vigil is faster):", ""]
    out += [
        *table(
            [
                "Vigil",
                "keepalived",
                "served: p50 ratio",
                "p90 ratio",
                "mean ratio",
                "survivor holds the address: mean ratio (ms / ms)",
            ],
            rows2,
        ),
        "",
        "The client's times are quantised by its 50 ms timeout (section 1), so a p50 can jump "
        "by one step between runs; the means are steadier. The last column compares the "
        "moment the survivor took the address (Vigil: address_acquired; keepalived: the "
        "MASTER log line), which no probe quantises; Vigil still starts the app after it.",
        "",
    ]
    out += [
        "VRRP's arithmetic: the backup takes over after 3 x advert_int + skew, skew = "
        "(256 - priority) / 256 (x advert_int in v3), minus however long ago the last advert "
        "was sent; the client is served a few ms after MASTER since the app already runs on "
        "the backup. Vigil restarts the app on the survivor (cold), which keepalived does "
        "not do: that is most of the difference once detection is comparable.",
        "",
    ]
    kr0 = res.keepalived[0]
    out += [
        "keepalived configuration (node n1; n2 differs only in router_id; the v3 run adds "
        "`vrrp_version 3` and `advert_int 0.1`):",
        "",
        "```",
        kr0.config_text.rstrip(),
        "```",
        "",
    ]
    return out
