"""``vigil lab``: a real cluster on one Linux machine, built from network namespaces.

    <prefix>-bus      br0 10.213.0.2/24; nats-1..3 on ports 4222..4224 (one JetStream cluster,
                      routes on 6222..6224), membership-1/2, placement-1/2
    <prefix>-n1..nN   eth0 10.213.0.11.. on br0, each node's address + supervisor (and its apps)
    <prefix>-client   eth0 10.213.0.250 on br0, for real clients

Every Vigil process and NATS server runs under a keeper (``keeper``) that restarts it. Nothing
routes out of the lab; the only doors from the host are TCP forwarders on 127.0.0.1 to each NATS
server, so ``nats sub 'vigil.>'`` and ``vigil status`` work from the host.
"""
