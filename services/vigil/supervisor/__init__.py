"""Supervisor: the node's applications. One per node.

- subscribes: ``placement.*`` decisions, this node's ``address.<node>.*.acquired|released``,
  ``config.applied``.
- publishes: ``app.<node>.<group>.started|stopped|failed`` and ``service.<group>.up|down``.
- owns: the group apps running on this node (each in its own process group), their logs.
- reconciles: on every event and every second: an app runs here exactly when the group is placed
  here *and* this node holds its address at that epoch (run order: address, then app).
- on failure: an app that exits is reported at once (we are its parent, no polling) and
  restarted after a back-off; a restarted supervisor has no children and says so on the bus, so
  the address service may release what no app uses.
"""
