"""``vigil secure init DIR``: write a cluster's credentials, certificates and server config.

Layout (secrets 0600, the directory 0700)::

    DIR/ca.pem  ca-key.pem              the cluster's CA (kept on re-init unless --new-ca)
    DIR/server.pem  server-key.pem      every NATS server's certificate, routes included
    DIR/auth.conf  route-tls.conf  nats.conf
    DIR/cluster.conf                    a member of a 3-server cluster, with command-line
                                        flags for its name, store and routes (compose, k8s)
    DIR/creds/<role>.nk                 one nkey seed per role: operator, reader, membership,
                                        placement, node-<name>
    DIR/secure.json                     where everything is (what `vigil lab info` hands out)

Containers mount the bundle elsewhere than where it was written: ``at`` is that path, written
into the server configs and the manifest. With ``group`` the secrets are 0640 and the directories
0750 for that group (unprivileged containers, e.g. uid/gid 10001, read their credentials; nothing
else on the host does).

Re-running with ``--force`` is rotation: new seeds and a new server certificate under the same
CA; reload the servers, then restart each process with its new file (docs/security.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from vigil.core.subjects import Subjects

from . import pki
from .permissions import roles
from .serverconf import (
    TlsFiles,
    User,
    auth_conf,
    cluster_member_conf,
    route_tls_conf,
    server_conf,
)

DEFAULT_NAMES = ["localhost", "127.0.0.1"]


class BundleError(ValueError):
    pass


@dataclass(frozen=True)
class Bundle:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def creds(self, role: str) -> Path:
        return self.dir / "creds" / f"{role}.nk"

    @property
    def manifest(self) -> Path:
        return self.dir / "secure.json"


def _write(path: Path, data: bytes | str, *, secret: bool, group: int | None = None) -> None:
    raw = data.encode() if isinstance(data, str) else data
    mode = (0o640 if group is not None else 0o600) if secret else 0o644
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    if group is not None:
        os.chown(tmp, -1, group)
    os.chmod(tmp, mode)  # the umask may have narrowed it; never widened
    os.replace(tmp, path)


def _private_dir(path: Path, group: int | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if group is not None:
        os.chown(path, -1, group)
    os.chmod(path, 0o750 if group is not None else 0o700)


def _new_user_seed() -> tuple[str, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    pair = nkeys.from_seed(bytearray(seed))
    public = pair.public_key.decode()
    pair.wipe()
    return seed.decode(), public


def _creds_text(role: str, public: str, seed: str) -> str:
    return (
        f"# Vigil credentials: role {role}, nkey user {public}.\n"
        "# Secret: whoever holds this file is this role on the bus. Keep it 0600.\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
    )


def init(
    directory: Path,
    nodes: list[str],
    *,
    subjects: Subjects,
    names: list[str] | None = None,
    cluster: str = "vigil",
    listen: str = "127.0.0.1:4222",
    force: bool = False,
    new_ca: bool = False,
    at: Path | None = None,
    group: int | None = None,
) -> Bundle:
    b = Bundle(directory)
    if b.manifest.exists() and not force:
        raise BundleError(f"{directory} already holds credentials (use --force to rotate them)")
    if at is not None and not at.is_absolute():
        raise BundleError(f"--at: {str(at)!r} is not an absolute path")
    _private_dir(directory, group)
    _private_dir(directory / "creds", group)
    home = at or directory.resolve()  # where the files are read from

    ca_key = directory / "ca-key.pem"
    if b.ca.exists() and ca_key.exists() and not new_ca:
        ca = pki.Issued(b.ca.read_bytes(), ca_key.read_bytes())
    else:
        ca = pki.new_ca(cluster)
        _write(ca_key, ca.key_pem, secret=True)
        _write(b.ca, ca.cert_pem, secret=False)
    server = pki.issue(ca, "nats", names or DEFAULT_NAMES, server=True)
    _write(directory / "server-key.pem", server.key_pem, secret=True, group=group)
    _write(directory / "server.pem", server.cert_pem, secret=False)

    users: list[User] = []
    for role, permissions in roles(subjects, nodes).items():
        seed, public = _new_user_seed()
        _write(b.creds(role), _creds_text(role, public, seed), secret=True, group=group)
        users.append(User(role, public, permissions))
    # stale roles (a node removed since the last run) lose their file as well as their user
    keep = {b.creds(u.role).name for u in users}
    for old in (directory / "creds").glob("*.nk"):
        if old.name not in keep:
            old.unlink()

    tls = TlsFiles(str(home / "server.pem"), str(home / "server-key.pem"), str(home / "ca.pem"))
    _write(directory / "auth.conf", auth_conf(users, tls), secret=False)
    _write(directory / "route-tls.conf", route_tls_conf(tls), secret=False)
    _write(directory / "nats.conf", server_conf(listen), secret=False)
    _write(directory / "cluster.conf", cluster_member_conf(), secret=False)
    at_home = Bundle(home)
    manifest = {
        "ca": str(at_home.ca),
        "server_conf": str(home / "nats.conf"),
        "creds": {
            "operator": str(at_home.creds("operator")),
            "reader": str(at_home.creds("reader")),
            "membership": str(at_home.creds("membership")),
            "placement": str(at_home.creds("placement")),
            "nodes": {n: str(at_home.creds(f"node-{n}")) for n in nodes},
        },
    }
    _write(b.manifest, json.dumps(manifest, indent=2) + "\n", secret=False)
    return b
