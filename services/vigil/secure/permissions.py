"""Who may publish and subscribe to what: one rule set per role, derived from the subject module.

Pure: subjects in, permission lists out. JetStream is reached through subjects too, so the rules
spell out the API calls each role makes:

- a KV put, create, update or delete is a publish to ``$KV.<bucket>.<key>`` (answered by the
  server on the caller's inbox);
- a KV get is a request to ``$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`` (or
  ``$JS.API.STREAM.MSG.GET.KV_<bucket>`` when direct get is off);
- opening a bucket or listing its keys is ``$JS.API.STREAM.INFO.KV_<bucket>``; a watch creates
  an ordered consumer (``$JS.API.CONSUMER.CREATE.KV_<bucket>...``) and answers its flow control
  on ``$JS.FC.KV_<bucket>.>``;
- creating a bucket or the event stream is ``$JS.API.STREAM.CREATE.<stream>``.

Replies reach each client on its own inbox prefix (``inbox_prefix``), which only it may
subscribe to, so no role reads another's answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vigil.core.subjects import Subjects

JS = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    # may answer requests made to it (the supervisor answers log requests), nothing more
    responses: bool = False


def _stream(s: Subjects, bucket: str) -> str:
    return f"KV_{bucket}"


def _read_bucket(s: Subjects, bucket: str) -> list[str]:
    st = _stream(s, bucket)
    return [
        f"{JS}.STREAM.INFO.{st}",
        f"{JS}.DIRECT.GET.{st}.$KV.{bucket}.>",
        f"{JS}.STREAM.MSG.GET.{st}",
        f"{JS}.CONSUMER.CREATE.{st}",
        f"{JS}.CONSUMER.CREATE.{st}.>",
        f"{JS}.CONSUMER.DELETE.{st}.>",
        f"{JS}.CONSUMER.INFO.{st}.>",
        f"$JS.FC.{st}.>",
    ]


def _read_events(s: Subjects) -> list[str]:
    st = s.stream
    return [
        f"{JS}.STREAM.INFO.{st}",
        f"{JS}.CONSUMER.CREATE.{st}",
        f"{JS}.CONSUMER.CREATE.{st}.>",
        f"{JS}.CONSUMER.DELETE.{st}.>",
        f"{JS}.CONSUMER.INFO.{st}.>",
        f"$JS.FC.{st}.>",
    ]


def _read_all(s: Subjects) -> list[str]:
    return [rule for b in s.all_buckets for rule in _read_bucket(s, b)] + _read_events(s)


def _create_all(s: Subjects) -> list[str]:
    """Creating (never updating or deleting) Vigil's buckets and event stream: whichever of the
    cluster-wide services or the operator starts first sets them up."""
    return [f"{JS}.STREAM.CREATE.{_stream(s, b)}" for b in s.all_buckets] + [
        f"{JS}.STREAM.CREATE.{s.stream}"
    ]


def _write(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def node(s: Subjects, name: str) -> Permissions:
    """A node's address service and supervisor: it speaks only for itself."""
    r = s.root
    return Permissions(
        publish=[
            s.heartbeat(name),
            f"{r}.address.{name}.>",
            f"{r}.app.{name}.>",
            s.service("*", "*", name),
            _write(s.bucket_observed, f"address.{name}.>"),
            _write(s.bucket_observed, f"app.{name}.>"),
            *_read_all(s),
        ],
        subscribe=[
            s.all_placements,
            s.config_applied,
            f"{r}.app.{name}.>",
            f"{r}.address.{name}.>",
            s.all_intents,
            s.all_node_events,
            s.logs_request(name),
        ],
        responses=True,
    )


def membership(s: Subjects) -> Permissions:
    return Permissions(
        publish=[
            s.all_node_events,
            _write(s.bucket_nodes, "*"),
            _write(s.bucket_leases, "*"),
            # Moving the leases bucket's leader off the nodes bucket's server, so that one
            # server's death costs at most one of them an election (docs/safety.md).
            f"{JS}.STREAM.LEADER.STEPDOWN.{_stream(s, s.bucket_leases)}",
            *_read_all(s),
            *_create_all(s),
        ],
        subscribe=[s.all_heartbeats, s.config_applied],
        responses=True,  # a heartbeat asks for a lease: the grant is the answer
    )


def placement(s: Subjects) -> Permissions:
    r = s.root
    return Permissions(
        publish=[
            s.all_placements,
            f"{r}.group.>",
            f"{r}.alert.*",
            s.node_fenced("*"),
            s.service("*", "down", "*"),  # for a lost node, which cannot say it itself
            _write(s.bucket_placement, "*"),
            _write(s.bucket_fencing, ">"),  # key <node>.<incarnation>
            _write(s.bucket_services, "*"),
            *_read_all(s),
            *_create_all(s),
        ],
        subscribe=[
            s.all_node_events,
            f"{r}.address.>",
            f"{r}.app.>",
            s.all_intents,
            s.config_applied,
            f"{r}.service.>",
        ],
    )


def operator(s: Subjects) -> Permissions:
    """The CLI: the cluster file and intents, and everything a reader may do."""
    return Permissions(
        publish=[
            _write(s.bucket_config, "cluster"),
            _write(s.bucket_intents, "*"),
            s.config_applied,
            s.all_intents,
            s.logs_request("*"),
            *_read_all(s),
            *_create_all(s),
        ],
        subscribe=[s.all_events],
    )


def reader(s: Subjects) -> Permissions:
    """``nats sub 'vigil.>'``, ``vigil status``, ``vigil events``: look, never touch."""
    return Permissions(publish=_read_all(s), subscribe=[s.all_events])


def roles(s: Subjects, nodes: list[str]) -> dict[str, Permissions]:
    """Every role of a cluster with these nodes, by user name."""
    out = {
        "operator": operator(s),
        "reader": reader(s),
        "membership": membership(s),
        "placement": placement(s),
    }
    out.update({f"node-{n}": node(s, n) for n in nodes})
    return out
