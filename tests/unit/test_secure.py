"""`vigil secure init`: what it writes, with which modes; credentials read back; no secret shown."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from vigil.cli.main import main
from vigil.core.credentials import Credentials, CredentialsError, inbox_prefix, redact
from vigil.core.subjects import Subjects
from vigil.secure.bundle import BundleError, init


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_every_role_secret_files_0600(tmp_path: Path) -> None:
    b = init(tmp_path / "s", ["n1", "n2"], subjects=Subjects("vigil"), names=["nats.example"])
    manifest = json.loads(b.manifest.read_text())
    assert set(manifest["creds"]) == {"operator", "reader", "membership", "placement", "nodes"}
    assert set(manifest["creds"]["nodes"]) == {"n1", "n2"}
    assert mode(b.dir) == 0o700
    for secret in [b.dir / "ca-key.pem", b.dir / "server-key.pem", *b.dir.glob("creds/*.nk")]:
        assert mode(secret) == 0o600, secret
    auth = (b.dir / "auth.conf").read_text()
    for role in ["operator", "reader", "membership", "placement", "node-n1", "node-n2"]:
        user = Credentials(b.creds(role)).user()
        assert user is not None and user in auth
        assert f'"{inbox_prefix(user)}.>"' in auth
        seed = next(x for x in b.creds(role).read_text().split() if x.startswith("SU"))
        assert seed not in auth  # public keys only: no seed in the server's config
    cert = x509.load_pem_x509_certificate((b.dir / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["nats.example"]


def test_init_for_containers_writes_their_paths_and_a_group(tmp_path: Path) -> None:
    """``--at``: the servers' configs and the manifest name where containers mount the bundle;
    ``--group``: secrets 0640 for that group (unprivileged containers), the CA's key still 0600."""
    group = os.getgid() if os.geteuid() != 0 else 10001  # chgrp to another group needs root
    b = init(
        tmp_path / "s",
        ["n1"],
        subjects=Subjects("vigil"),
        at=Path("/etc/vigil/secure"),
        group=group,
    )
    for conf in ("auth.conf", "route-tls.conf"):
        text = (b.dir / conf).read_text()
        assert '"/etc/vigil/secure/server-key.pem"' in text and str(tmp_path) not in text
    assert 'include "auth.conf"' in (b.dir / "cluster.conf").read_text()
    manifest = json.loads(b.manifest.read_text())
    assert manifest["creds"]["nodes"]["n1"] == "/etc/vigil/secure/creds/node-n1.nk"
    assert mode(b.dir) == mode(b.dir / "creds") == 0o750
    for secret in [b.dir / "server-key.pem", *b.dir.glob("creds/*.nk")]:
        assert (mode(secret), secret.stat().st_gid) == (0o640, group), secret
    assert mode(b.dir / "ca-key.pem") == 0o600
    with pytest.raises(BundleError, match="--at"):
        init(tmp_path / "t", ["n1"], subjects=Subjects("vigil"), at=Path("relative"))


def test_rotation_keeps_the_ca_and_changes_every_key(tmp_path: Path) -> None:
    s = Subjects("vigil")
    first = init(tmp_path / "s", ["n1"], subjects=s)
    ca, key = first.ca.read_bytes(), Credentials(first.creds("operator")).user()
    with pytest.raises(BundleError, match="--force"):
        init(tmp_path / "s", ["n1"], subjects=s)
    again = init(tmp_path / "s", ["n2"], subjects=s, force=True)
    assert again.ca.read_bytes() == ca
    assert Credentials(again.creds("operator")).user() != key
    assert not again.creds("node-n1").exists()  # a node gone from the list loses its file


def test_cli_init_from_a_cluster_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text("cluster: {name: c}\nnodes: [{name: a1}, {name: b2}]\n")
    assert main(["secure", "init", str(tmp_path / "s"), "-f", str(cluster)]) == 0
    assert (tmp_path / "s" / "creds" / "node-b2.nk").exists()
    assert main(["secure", "init", str(tmp_path / "t"), "--nodes", "ok,Bad.Name"]) == 1
    assert "--nodes[1]" in capsys.readouterr().err


def test_bad_credentials_name_the_file_not_the_secret(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nk"
    bad.write_text("SUNOTASEED\n")
    with pytest.raises(CredentialsError, match="no user nkey seed") as info:
        Credentials(bad).options(["nats://x:4222"])
    assert "SUNOTASEED" not in str(info.value)
    with pytest.raises(CredentialsError, match="cannot read"):
        Credentials(tmp_path / "missing").options([])


def test_tls_is_wanted_for_a_ca_or_a_tls_url(tmp_path: Path) -> None:
    assert "tls" not in Credentials().options(["nats://h:4222"])
    assert "tls" in Credentials().options(["tls://h:4222"])


def test_redact() -> None:
    assert redact("nats://bob:hunter2@h:4222") == "nats://***@h:4222"
    assert (
        redact("cannot reach tls://t0k3n@h:1, nats://h:2")
        == "cannot reach tls://***@h:1, nats://h:2"
    )
