"""Address: the node's virtual addresses, and the node's lease. One per node.

- subscribes: ``placement.*`` decisions, this node's ``app.<node>.*.stopped|failed``,
  ``config.applied``.
- publishes: ``<root>_hb.<node>`` heartbeats (from the heart, ``heart.py``: a thread, loop and
  connection of its own, so nothing the service consumes delays them);
  ``address.<node>.<group>.acquired|released``.
- owns: the group addresses on this node's interface, and the nftables fence (table ``vigil``)
  that stops this node answering for them when its lease lapses, even if this agent is frozen.
- reconciles: on every decision and every second: desired (placements for this node) against
  actual (addresses on the interface); before acquiring it re-reads the placement from the bus.
- on failure: a lapsed lease drops every address at once; a restart installs the fence with no
  lease (nothing answers) and re-acquires only what the bus says is ours.
"""
