"""Vigil's benchmarks: ``make bench`` / ``python -m bench`` (options: ``python -m bench -h``).

    cli         the command line, the sections in order, the raw results (re-render: --render)
    failover    section 1: node loss, app crash, switchover in a lab, hops from event stamps
    keepalived  section 2: keepalived on the lab's own network, same kill, same client
    scale       section 3: real membership + placement, simulated agents (simagent), one NATS
    load        section 4: a lab for N minutes with one core saturated
    netfault    the one node-loss procedure both Vigil and keepalived get
    micro       what one fence renewal costs here
    events, stats, procstat, machine, cleanup, report: the plumbing

Everything runs on this machine as root, in network namespaces named after ``--prefix``
(default ``vbench``), and is removed on the way out, also on errors and SIGTERM.
"""
