"""Cluster files the lab makes up: ``vigil lab up --nodes N`` without a file."""

from __future__ import annotations

from typing import Any

from vigil.wire.cluster import ClusterSpec

from ..core.config import load_data

DEMO_APP = "python3 -m vigil.lab.demo_app --bind ${VIGIL_ADDRESS} --port 8080"


def generated(nodes: int, groups: int | None = None) -> ClusterSpec:
    """``nodes`` nodes and one group per node (or ``groups``), each preferring its own node and
    falling over to the next ones in order."""
    return load_data(generated_data(nodes, groups))


def generated_data(nodes: int, groups: int | None = None) -> dict[str, Any]:
    """``generated``'s cluster file, as the data a YAML file would hold."""
    names = [f"n{i + 1}" for i in range(nodes)]
    count = nodes if groups is None else groups
    return {
        "cluster": {"name": "lab"},
        "nodes": [{"name": n} for n in names],
        "groups": [
            {
                "name": f"web{i + 1}",
                "address": f"10.213.0.{101 + i}/24",
                "preferred": names[i % nodes],
                "possible": [names[(i + k) % nodes] for k in range(1, nodes)],
                "app": {"command": DEMO_APP},
            }
            for i in range(count)
        ],
    }
