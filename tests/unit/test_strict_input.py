"""Hostile cluster files and hostile bytes: every bad class is refused whole, as a one-line
config error naming the field; arbitrary input into the loader and the wire decoders yields a
config error or a counted drop, never anything else."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.core import config
from vigil.core.bus import decode_event
from vigil.core.config import ConfigError, load_file, load_text
from vigil.wire import events, records

GOOD = """\
cluster: {name: lab}
nodes: [{name: n1}, {name: n2}]
groups:
  - name: web1
    address: 10.213.0.101/24
    preferred: n1
    possible: [n2]
    app: {command: "python3 -m http.server 8080"}
"""


def refused(text: str | bytes, field: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert info.value.field == field, message
    return message


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        # control characters in names (a trailing newline used to pass the `$` of a regex)
        ("{name: lab}", '{name: "lab\\n"}', "cluster.name"),
        ("{name: n2}]", '{name: "n2\\r"}]', "nodes[1].name"),
        ("name: web1", 'name: "web1\\n"', "groups[0].name"),
        ("name: web1", 'name: "web\\x1b1"', "groups[0].name"),
        # durations that are not numbers of seconds
        ("{name: lab}", "{name: lab, timing: {lease: .nan}}", "cluster.timing.lease"),
        ("{name: lab}", "{name: lab, timing: {heartbeat: .inf}}", "cluster.timing.heartbeat"),
        ("{name: lab}", "{name: lab, timing: {lease: -.inf}}", "cluster.timing.lease"),
        ("{name: lab}", "{name: lab, timing: {lease: 1" + "0" * 400 + "}}", "cluster.timing.lease"),
        ("app: {", "restart: {window: .nan}\n    app: {", "groups[0].restart.window"),
        # commands that do not split
        ('"python3 -m http.server 8080"', '"sh -c \'echo"', "groups[0].app.command"),
        ('"python3 -m http.server 8080"', '"  "', "groups[0].app.command"),
        ("app: {", 'monitors: [{exec: "test \'"}]\n    app: {', "groups[0].monitors[0].exec"),
        ("{name: lab}", '{name: lab, alert: "mail \'"}', "cluster.alert"),
        ('"python3 -m http.server 8080"', '"echo $X", env: {X: "it\'s"}', "groups[0].app.command"),
        # interfaces that cannot exist
        ("{name: n2}]", "{name: n2, interface: abcdefghijklmnop}]", "nodes[1].interface"),
        ("{name: n2}]", '{name: n2, interface: "eth 0"}]', "nodes[1].interface"),
        ("{name: n2}]", "{name: n2, interface: eth0/1}]", "nodes[1].interface"),
        ("{name: n2}]", '{name: n2, interface: ".."}]', "nodes[1].interface"),
        ("{name: n2}]", '{name: n2, interface: "eth0\\n"}]', "nodes[1].interface"),
        ("{name: n2}]", "{name: n2, interface: 'eth:0'}]", "nodes[1].interface"),
        # addresses no node can hold for a group
        ("10.213.0.101/24", "0.0.0.0/24", "groups[0].address"),
        ("10.213.0.101/24", "127.0.0.5/8", "groups[0].address"),
        ("10.213.0.101/24", "224.0.0.1/24", "groups[0].address"),
        ("10.213.0.101/24", "255.255.255.255/32", "groups[0].address"),
        ("10.213.0.101/24", "10.213.0.255/24", "groups[0].address"),
        ("10.213.0.101/24", "10.213.0.0/24", "groups[0].address"),
        ("10.213.0.101/24", "240.0.0.1/24", "groups[0].address"),
        # an environment a process cannot have
        ("app: {", 'app: {env: {"A=B": x}, ', "groups[0].app.env"),
    ],
)
def test_bad_classes_are_refused_naming_the_field(old: str, new: str, field: str) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    refused(text, field)


def test_point_to_point_prefixes_have_no_network_address() -> None:
    load_text(GOOD.replace("10.213.0.101/24", "10.213.0.0/31"))
    load_text(GOOD.replace("10.213.0.101/24", "10.213.0.7/32"))


def test_duplicate_keys_are_refused_with_their_line() -> None:
    message = refused(GOOD + "cluster: {name: other}\n", "line 9")
    assert "duplicate key 'cluster'" in message
    refused(GOOD.replace("preferred: n1", "preferred: n1\n    preferred: n2"), "line 7")


def test_not_utf8_and_deep_nesting_are_config_errors() -> None:
    assert "not UTF-8" in refused(GOOD.encode() + b"# \xff\xfe\n", "")
    deep = "cluster: " + "[" * 5000 + "]" * 5000 + "\n"
    assert "nested deeper" in refused(deep, "line 1")
    assert "nested deeper" in refused(
        "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)), "line 33"
    )


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 10)}]" for i in range(1, 8)]
    assert "more than" in refused("\n".join(lines) + "\n", "")


def test_a_file_the_bus_cannot_hold_is_invalid(tmp_path: object) -> None:
    big = GOOD.replace(
        'app: {command: "', 'app: {env: {BIG: "' + "x" * config.MAX_PAYLOAD + '"}, command: "'
    )
    assert "the bus holds at most" in refused(big, "")


def test_a_huge_file_is_not_even_read(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "big.yaml"
    path.write_bytes(b"#" * (config.MAX_FILE + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load_file(path)


def test_the_good_file_still_loads() -> None:
    assert load_text(GOOD).groups[0].name == "web1"
    assert load_text(GOOD.encode()).groups[0].name == "web1"


# -- arbitrary input ------------------------------------------------------------------------------
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_the_loader_takes_any_bytes(data: bytes) -> None:
    try:
        load_text(data)
    except ConfigError as exc:
        assert "\n" not in str(exc)


_yamlish = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "cluster",
                    "nodes",
                    "groups",
                    "name",
                    "address",
                    "app",
                    "timing",
                    "lease",
                    "command",
                    "preferred",
                    "services",
                    "interface",
                    "monitors",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@SETTINGS
@given(_yamlish)
def test_the_validator_takes_any_document(raw: object) -> None:
    try:
        config.load_data(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc)


RECORDS = [
    records.NodeRecord,
    records.Placement,
    records.ServiceRecord,
    records.Intent,
    records.AddressStatus,
    records.AppStatus,
]


def _json_like() -> st.SearchStrategy[bytes]:
    leaves = st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text()
    doc = st.recursive(leaves, lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20)
    tagged = st.fixed_dictionaries(
        {"type": st.sampled_from([e.__struct_config__.tag for e in events.ALL_EVENTS])},
        optional={
            "source": leaves,
            "seq": leaves,
            "ts": leaves,
            "node": leaves,
            "group": leaves,
            "address": leaves,
            "epoch": leaves,
        },
    )
    return st.binary() | (doc | tagged).map(msgspec.json.encode)


@SETTINGS
@given(_json_like())
def test_every_wire_decoder_takes_any_bytes(data: bytes) -> None:
    # events as every service's subscriptions decode them: an event, or a reason to count a drop
    result = decode_event(data, tuple(events.ALL_EVENTS))
    assert isinstance(result, str | events.Event)
    # heartbeats (membership) and bucket records (get_record, the KV caches): DecodeError only
    for kind in [events.Heartbeat, *RECORDS]:
        with contextlib.suppress(msgspec.DecodeError):
            msgspec.json.decode(data, type=kind)
    # the stored cluster file as ConfigSource reads it
    with contextlib.suppress(msgspec.DecodeError, ConfigError):
        config.decode(data)
