"""Wire types: JSON on the wire with stable tags, and the committed JSON Schemas never drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from vigil.wire import cluster, events, records
from vigil.wire.generate import OUT, render


def test_committed_json_schemas_match_the_code() -> None:
    for name, text in render().items():
        path = OUT / name
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text() == text, f"{path} is stale: run `make schemas` and commit"


def test_every_event_has_a_stable_snake_case_tag() -> None:
    tags = {cls.__struct_config__.tag for cls in events.ALL_EVENTS}
    assert len(tags) == len(events.ALL_EVENTS)
    for tag in tags:
        assert isinstance(tag, str) and tag.islower() and " " not in tag


def test_events_are_readable_json() -> None:
    event = events.NodeLost(
        source="membership@bus",
        seq=7,
        ts=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        node="n1",
        silent_for=0.81,
    )
    raw = json.loads(msgspec.json.encode(event))
    assert raw == {
        "type": "node_lost",
        "source": "membership@bus",
        "seq": 7,
        "ts": "2026-01-02T03:04:05Z",
        "node": "n1",
        "silent_for": 0.81,
    }
    decoded = msgspec.json.decode(msgspec.json.encode(event), type=events.AnyEvent)
    assert decoded == event


def test_unknown_tags_and_garbage_are_rejected() -> None:
    decoder = msgspec.json.Decoder(events.AnyEvent)
    for bad in (b'{"type": "node_exploded"}', b"not json", b'{"type": "node_lost"}'):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decoder.decode(bad)


RECORDS = {
    records.NodeRecord: {"name": "n1", "state": "up", "since": "2026-01-01T00:00:00Z"},
    records.Placement: {"group": "g1", "node": "n1", "epoch": 3},
    records.ServiceRecord: {"name": "s", "members": ["g1"], "epoch": 1},
    records.Intent: {"group": "g1"},
    records.AddressStatus: {
        "group": "g1",
        "node": "n1",
        "address": "10.0.0.1/24",
        "held": True,
        "epoch": 1,
    },
    records.AppStatus: {"group": "g1", "node": "n1", "running": True, "epoch": 1},
}


@pytest.mark.parametrize("kind", list(RECORDS), ids=lambda k: k.__name__)
def test_stored_records_ignore_fields_a_newer_version_added(kind: type) -> None:
    data = {**RECORDS[kind], "added_later": {"any": ["shape"]}}
    msgspec.json.decode(json.dumps(data).encode(), type=kind)


def test_operator_input_stays_strict() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"name": "n1", "interfase": "eth0"}', type=cluster.Node)
