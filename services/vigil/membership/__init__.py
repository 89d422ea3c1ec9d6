"""Membership: who is alive, and who may answer for its addresses. Cluster-wide; run two or
more replicas, they agree through compare-and-set on each node's record.

- subscribes: ``<root>_hb.<node>`` heartbeats (requests) from each node of the cluster file
  (one subscription, one bounded queue, per node: a flood on one starves no other);
  ``config.applied``.
- publishes: a ``LeaseGranted`` reply to each heartbeat, once the grant is stored;
  ``node.<n>.joined`` and ``node.<n>.lost``.
- owns: bucket ``<root>_nodes`` (one NodeRecord per node: state, incarnation, lease end).
- reconciles: every heartbeat/4, declares lost every node recorded up whose last grant is a
  lease old; every few seconds re-reads config. Each heartbeat re-learns its node's state.
- on failure: a replica that starts, or comes back to the bus, gives every node a full lease
  from then before declaring any lost; a grant and a declaration race through the record's
  compare-and-set, so each transition is stored and published once, and a node declared lost
  is granted nothing but a new incarnation.
"""
