"""Render the committed JSON Schema files from the Structs (``python -m vigil.wire.generate``).

A unit test compares these renderings with ``schemas/json/*.json`` so the files never drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from vigil.wire import cluster, events, records

OUT = Path(__file__).with_name("json")


def render() -> dict[str, str]:
    docs: dict[str, Any] = {
        "cluster-file.schema.json": msgspec.json.schema(cluster.ClusterSpec),
        "events.schema.json": msgspec.json.schema(events.AnyEvent),
    }
    _, components = msgspec.json.schema_components(
        (
            records.NodeRecord,
            records.LeaseRecord,
            records.Placement,
            records.AddressStatus,
            records.AppStatus,
            records.Intent,
            records.ServiceRecord,
            records.StrayNode,
            records.FenceRecord,
        )
    )
    docs["records.schema.json"] = {"$defs": components}
    return {name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in docs.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
