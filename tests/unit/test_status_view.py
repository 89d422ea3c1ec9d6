"""The operator's table: what ``vigil status`` prints from a view (pure)."""

from __future__ import annotations

from vigil.core.status import GroupView, NodeView, StatusView, render_table


def view(bus: list[str]) -> StatusView:
    return StatusView(
        "prod",
        [NodeView("n1", "up")],
        [GroupView("web1", "n1", "normal", "10.0.0.10/24", 3, "n1")],
        bus=bus,
    )


def test_a_redundant_bus_adds_nothing_to_the_table() -> None:
    assert "BUS" not in render_table(view([]))


def test_streams_without_redundancy_are_listed_under_the_nodes() -> None:
    lines = render_table(view(["KV_vigil_nodes: no leader"])).splitlines()
    assert lines.index("KV_vigil_nodes: no leader") > lines.index("n1           up")
    assert any(ln.startswith("BUS (not redundant now") for ln in lines)
