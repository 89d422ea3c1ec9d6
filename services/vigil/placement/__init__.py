"""Placement: where every group runs. Cluster-wide; run two or more replicas.

- subscribes: ``node.*.joined|lost``, ``address.*.*.released|acquired``, ``config.applied``.
- publishes: ``placement.<group>`` (PlacementDecided, with the group's new epoch).
- owns: bucket ``<root>_placement`` (one Placement per group), written with compare-and-set so
  two replicas never both win a decision.
- reconciles: on every event and every second, over live copies of the nodes, placement and
  observed buckets; the decision itself is the pure function in ``rules``.
- on failure: a restarted replica reads the buckets and carries on from the stored epochs.
"""
