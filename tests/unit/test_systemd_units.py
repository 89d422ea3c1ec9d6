"""deploy/systemd/: one unit per service, restarted always, hardened, checked by
``systemd-analyze verify`` (skipped only where systemd-analyze is not installed)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
SERVICES = ("membership", "placement", "address", "supervisor")
VIGIL = str(Path(sys.executable).with_name("vigil"))


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / f"vigil-{name}.service")
    return parser


@pytest.mark.parametrize("name", SERVICES)
def test_one_unit_per_service_restarted_always(name: str) -> None:
    service = unit(name)["Service"]
    assert service["ExecStart"].split()[:2] == ["/usr/local/bin/vigil", name]
    assert service["Restart"] == "always"
    assert service["EnvironmentFile"] == "/etc/vigil/vigil.env"


ROLE_KEY = {
    "membership": "membership.nk",
    "placement": "placement.nk",
    "address": "node.nk",
    "supervisor": "node.nk",
}


@pytest.mark.parametrize("name", SERVICES)
def test_each_unit_authenticates_with_its_own_role(name: str) -> None:
    """Its own key as a systemd credential, the CA; the shared env file sets neither."""
    service = unit(name)["Service"]
    assert service["LoadCredential"] == f"nats.nk:/etc/vigil/secure/creds/{ROLE_KEY[name]}"
    env = dict(item.split("=", 1) for item in service["Environment"].split())
    assert env == {"VIGIL_CREDS": "%d/nats.nk", "VIGIL_TLS_CA": "/etc/vigil/secure/ca.pem"}
    shared = [line for line in (UNITS / "vigil.env").read_text().splitlines() if "=" in line]
    assert not any(line.startswith(("VIGIL_CREDS", "VIGIL_TLS")) for line in shared)


def test_address_is_bounded_to_the_network_capabilities() -> None:
    service = unit("address")["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["NoNewPrivileges"] == "yes"
    assert "AF_NETLINK" in service["RestrictAddressFamilies"]  # addresses, nftables
    assert "AF_PACKET" in service["RestrictAddressFamilies"]  # gratuitous ARP


@pytest.mark.parametrize("name", ["membership", "placement"])
def test_cluster_wide_services_run_with_no_privilege(name: str) -> None:
    service = unit(name)["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict"


def verify(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on a copy whose ExecStart is this checkout's `vigil`."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here (the units are documented as is)")
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("/usr/local/bin/vigil", VIGIL))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", SERVICES)
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    result = verify(UNITS / f"vigil-{name}.service", tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "src" / "vigil-address.service"
    broken.parent.mkdir()
    text = (UNITS / "vigil-address.service").read_text()
    broken.write_text(text.replace("Restart=always", "Restart=allways"))
    assert verify(broken, tmp_path).stderr.strip()
