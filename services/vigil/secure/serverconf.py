"""nats-server configuration text for a secured cluster. Pure: users and paths in, text out.

``auth.conf`` goes at the top level of any server's configuration (``include auth.conf``): the
users with their permissions, and TLS for clients. ``route-tls.conf`` goes inside its ``cluster``
block: routes are TLS too, and each server verifies its peers against the same CA. Defining users
refuses anonymous connections: there is no ``no_auth_user``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vigil.core.credentials import inbox_prefix

from .permissions import Permissions


@dataclass(frozen=True)
class User:
    role: str
    public_key: str
    permissions: Permissions


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str


def _q(value: str) -> str:
    return json.dumps(value)  # a quoted string: `$JS...` must stay a literal, not a variable


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _user(u: User) -> str:
    p = u.permissions
    subscribe = [*p.subscribe, f"{inbox_prefix(u.public_key)}.>"]
    lines = [
        f"    # {u.role}",
        "    {",
        f"      nkey: {_q(u.public_key)}",
        "      permissions: {",
        f"        publish: {{ allow: {_list(p.publish)} }}",
        f"        subscribe: {{ allow: {_list(subscribe)} }}",
    ]
    if p.responses:
        lines.append('        allow_responses: { max: 1, expires: "10s" }')
    lines += ["      }", "    }"]
    return "\n".join(lines)


def _tls(files: TlsFiles, *, verify: bool, indent: str = "") -> str:
    body = [
        f"cert_file: {_q(files.cert)}",
        f"key_file: {_q(files.key)}",
        f"ca_file: {_q(files.ca)}",
        f"verify: {'true' if verify else 'false'}",
        "timeout: 5",
    ]
    return "\n".join([f"{indent}tls {{", *(f"{indent}  {b}" for b in body), f"{indent}}}"])


def auth_conf(users: list[User], tls: TlsFiles) -> str:
    """Users and client TLS. Clients prove who they are with their nkey; the certificate proves
    the server to them (so a client certificate is not required)."""
    return "\n".join(
        [
            "# Written by `vigil secure init`: Vigil's users, their permissions, client TLS.",
            "authorization {",
            "  users: [",
            "\n".join(_user(u) for u in users),
            "  ]",
            "}",
            _tls(tls, verify=False),
            "",
        ]
    )


def route_tls_conf(tls: TlsFiles) -> str:
    """Inside ``cluster { ... }``: routes are mutual TLS against the cluster's CA."""
    return (
        "# Written by `vigil secure init`: include inside the cluster block.\n"
        + _tls(tls, verify=True)
        + "\n"
    )


def server_conf(listen: str) -> str:
    """A single server: enough for a test or a one-box `vigil up` (add -js -sd DIR to run it)."""
    return "\n".join(
        [
            "# Written by `vigil secure init`: one server; for three, add a cluster block that",
            "# includes route-tls.conf.",
            f"listen: {_q(listen)}",
            'include "auth.conf"',
            "",
        ]
    )


def cluster_member_conf() -> str:
    """A member of a 3-server cluster whose name, store, cluster listen and routes come from
    nats-server's command-line flags (compose, k8s): users, client TLS and route TLS only.
    nats-server merges the flags into this file's ``cluster`` block, TLS included."""
    return "\n".join(
        [
            "# Written by `vigil secure init`: one member of a cluster. Run it with",
            "#   nats-server -c cluster.conf --name=NAME -js -sd=DIR --cluster_name=vigil \\",
            "#     --cluster=nats://0.0.0.0:6222 --routes=nats://PEER:6222,... --no_advertise",
            'include "auth.conf"',
            "cluster {",
            '  include "route-tls.conf"',
            "}",
            "",
        ]
    )


def member_conf(
    name: str,
    listen: str,
    store_dir: str,
    *,
    cluster_listen: str | None = None,
    routes: list[str] | None = None,
) -> str:
    """One server of a lab or `vigil up`, with its JetStream store; with ``cluster_listen`` and
    ``routes`` (every member's ``host:port``) a member of the cluster ``vigil``, routes TLS.
    Lives beside ``auth.conf``: nats-server resolves includes from the file's own directory."""
    lines = [
        "# Written by the lab: one secured server.",
        f"server_name: {_q(name)}",
        f"listen: {_q(listen)}",
        f"jetstream {{ store_dir: {_q(store_dir)} }}",
        'include "auth.conf"',
    ]
    if cluster_listen is not None:
        lines += [
            "cluster {",
            '  name: "vigil"',
            f"  listen: {_q(cluster_listen)}",
            f"  routes: {_list([f'nats-route://{r}' for r in routes or []])}",
            # clients are given every URL; a server must not advertise others to them
            "  no_advertise: true",
            '  include "route-tls.conf"',
            "}",
        ]
    return "\n".join([*lines, ""])
