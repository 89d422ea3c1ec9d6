"""The cluster file: valid files load, every error names its field, nothing half-applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.core.config import ConfigError, load_file, load_text
from vigil.core.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
cluster: {name: lab}
nodes: [{name: n1}, {name: n2}, {name: n3}]
groups:
  - name: web1
    address: 10.213.0.101/24
    preferred: n1
    possible: [n2, n3]
    app: {command: "python3 -m http.server --bind ${VIGIL_ADDRESS} 8080"}
"""


def test_example_files_are_valid() -> None:
    spec = load_file(ROOT / "examples" / "lab.yaml")
    assert [n.name for n in spec.nodes] == ["n1", "n2", "n3"]
    assert spec.groups[0].sequence == ["n1", "n2", "n3"]


def test_the_issue_format_loads_with_defaults() -> None:
    spec = load_text(GOOD)
    assert spec.cluster.timing.heartbeat == 0.2
    assert spec.cluster.timing.lease == 0.8
    assert spec.nodes[0].interface == "eth0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("preferred: n1", "preferred: n9"), "groups[0].preferred: unknown node 'n9'"),
        (("possible: [n2, n3]", "possible: [n2, n7]"), "groups[0].possible[1]: unknown node 'n7'"),
        (
            ("possible: [n2, n3]", "possible: [n2, n1]"),
            "groups[0].possible[1]: node 'n1' is listed twice",
        ),
        (
            ("10.213.0.101/24", "10.213.0.300/24"),
            "groups[0].address: not an IPv4 address with prefix: '10.213.0.300/24'",
        ),
        (("10.213.0.101/24", "10.213.0.101"), "groups[0].address: needs a prefix length"),
        (("name: web1", "name: 5"), "groups[0].name: expected 'str', got 'int'"),
        (("name: web1", "name: Web.1"), "groups[0].name: invalid name 'Web.1'"),
        (
            ("cluster: {name: lab}", "cluster: {name: lab, colour: red}"),
            "cluster.colour: unknown key",
        ),
        (("    app: {command", "    ap: {command"), "groups[0].ap: unknown key"),
        (
            ("cluster: {name: lab}", "cluster: {name: lab, timing: {lease: soon}}"),
            "cluster.timing.lease: expected a duration like '200ms' or '1s', got 'soon'",
        ),
        (
            ("cluster: {name: lab}", "cluster: {name: lab, timing: {heartbeat: 1s, lease: 2s}}"),
            "cluster.timing.lease: must be at least 4 x heartbeat",
        ),
        (
            ("nodes: [{name: n1}, {name: n2}, {name: n3}]", "nodes: [{name: n1}, {name: n1}]"),
            "nodes[1].name: duplicate node 'n1'",
        ),
        (('app: {command: "python3', 'app: {stop_timeout: 2s, command: "python3'), None),
    ],
)
def test_errors_name_the_field(change: tuple[str, str], message: str | None) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    if message is None:
        load_text(text)
        return
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_duplicate_addresses_are_refused() -> None:
    text = (
        GOOD
        + """  - name: web2
    address: 10.213.0.101/24
    preferred: n2
    app: {command: x}
"""
    )
    with pytest.raises(ConfigError, match=r"groups\[1\].address: 10.213.0.101 is already used"):
        load_text(text)


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_text("cluster: [unclosed")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_text("- just\n- a list\n")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_file("/nonexistent/cluster.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("200ms", 0.2), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), (3, 3.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "fast", "-1s", "0", True, None, "1 parsec"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert format_duration(0.2) == "200ms"
    assert format_duration(1.5) == "1.5s"
