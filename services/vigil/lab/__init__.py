"""``vigil lab``: a real cluster on one Linux machine, built from network namespaces.

    <prefix>-bus      br0 10.213.0.2/24, nats-server, membership, placement
    <prefix>-n1..nN   eth0 10.213.0.11.. on br0, each node's address + supervisor (and its apps)
    <prefix>-client   eth0 10.213.0.250 on br0, for real clients

Nothing routes out of the lab; the only door from the host is a TCP forwarder on 127.0.0.1 to
the bus's NATS port, so ``nats sub 'vigil.>'`` and ``vigil status`` work from the host.
"""
