"""Membership: who is alive. Cluster-wide; run two or more replicas, they agree through the bus.

- subscribes: ``<root>_hb.*`` heartbeats from every node's address service; ``config.applied``.
- publishes: ``node.<n>.joined`` and ``node.<n>.lost``.
- owns: bucket ``<root>_nodes`` (one NodeRecord per node).
- reconciles: every heartbeat/4 checks leases; every few seconds re-reads config and the bucket.
- on failure: a replica that restarts gives every node it finds ``up`` a fresh lease; replicas
  dedupe transitions with a compare-and-set on the node's record, so each is published once.
"""
