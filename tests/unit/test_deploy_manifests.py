"""The deployment files (compose/, k8s/, Dockerfile) agree with Vigil's CLI contract.

They are parsed, not run: no Docker engine or Kubernetes cluster is needed. What is checked:

* every YAML file parses (multi-document aware);
* every Vigil container runs the ``vigil`` entrypoint with a known subcommand, and every
  ``$(VAR)`` it uses in Kubernetes args is defined;
* every Vigil container is given NATS URLs, and those URLs reach all the NATS servers that the
  same files define (loopback-published ports for host-network containers);
* NATS runs with JetStream, 3 servers, clustered, with storage;
* address has NET_ADMIN and NET_RAW and the host network; supervisor the host PID namespace;
* membership and placement have at least 2 replicas;
* the Kubernetes cluster file is consistent and the apply Job reads it where it is mounted;
* ``k8s/kustomization.yaml`` lists exactly the manifests in ``k8s/``.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S_DIR = ROOT / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
DOCKERFILE = ROOT / "Dockerfile"

SUBCOMMANDS = frozenset({"membership", "placement", "address", "supervisor", "apply", "status"})
CLUSTER_WIDE = ("membership", "placement")
NODE_SERVICES = ("address", "supervisor")
NATS_CLIENT_PORT = 4222
VIGIL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
CLUSTER_SCOPED_KINDS = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}
)


# --------------------------------------------------------------------------------------------
# loading


def yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml"))


class ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus compose's merge tags (``!reset``, ``!override``), read as plain values."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)
        ),
    )


@cache
def load_docs(path: Path) -> tuple[Any, ...]:
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=ComposeLoader) if d is not None)


def image_name(image: str) -> str:
    """``registry:5000/team/vigil:0.1@sha256:...`` -> ``vigil``."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def argv_of(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_default(value: str) -> str:
    """Interpolate ``${VAR:-default}`` as compose would with VAR unset."""
    return _COMPOSE_VAR.sub(
        lambda m: m.group(2) if m.group(2) is not None else f"<unset {m.group(1)}>", value
    )


def flag_value(argv: list[str], *names: str) -> str | None:
    """The value of ``--flag value`` or ``--flag=value`` (first match), else None."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def has_flag(argv: list[str], *names: str) -> bool:
    return any(arg in names or arg.split("=", 1)[0] in names for arg in argv)


def split_urls(value: str) -> list[tuple[str, int]]:
    """``nats://a:4222,nats://b`` -> [("a", 4222), ("b", 4222)]; raises on a malformed URL."""
    out = []
    for raw in value.split(","):
        url = raw.strip()
        match = re.fullmatch(r"(?:nats|tls)://(?:[^@/]+@)?([^:/]+)(?::(\d+))?/?", url)
        if match is None:
            raise AssertionError(f"not a NATS URL: {url!r} (in {value!r})")
        out.append((match.group(1), int(match.group(2) or NATS_CLIENT_PORT)))
    return out


def nats_conf_has_jetstream(text: str) -> bool:
    return re.search(r"^\s*(jetstream|js)\s*[:=]?\s*(\{|enabled|true)", text, re.M) is not None


def test_every_yaml_file_parses() -> None:
    files = yaml_files(COMPOSE_DIR) + yaml_files(K8S_DIR)
    assert COMPOSE_FILE in files, "compose/docker-compose.yml is missing"
    assert KUSTOMIZATION in files, "k8s/kustomization.yaml is missing"
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path.relative_to(ROOT)} has no YAML document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path.relative_to(ROOT)}: a document is not a mapping"


def test_the_console_script_is_vigil() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "vigil" in project["scripts"], "the manifests run the `vigil` console script"


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert froms and froms[-1].split()[0] == "${BASE_IMAGE}", "the base is a build argument"
    args = dict(rest.partition("=")[::2] for kw, rest in instructions if kw == "ARG")
    assert args.get("BASE_IMAGE") == "python:3.11-slim-bookworm", "default: upstream Python"
    runs = " && ".join(rest for kw, rest in instructions if kw == "RUN")
    apt = re.search(r"apt-get install ([^&;]*)", runs)
    assert apt is not None, "no apt-get install"
    packages = apt.group(1).split()
    assert "--no-install-recommends" in packages
    assert {"nftables", "iproute2"} <= set(packages), "address needs nft and ip"
    assert "rm -rf /var/lib/apt/lists" in runs
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), "pip install --no-cache-dir ."
    entrypoints = [rest for kw, rest in instructions if kw == "ENTRYPOINT"]
    assert entrypoints and yaml.safe_load(entrypoints[-1]) == ["vigil"]
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert not users or users[-1] in ("root", "0"), "address needs root (NET_ADMIN effective)"
    copied = " ".join(rest for kw, rest in instructions if kw in ("COPY", "ADD"))
    for needed in ("pyproject.toml", "services", "schemas"):
        assert needed in copied, f"the image build must COPY {needed}"


# --------------------------------------------------------------------------------------------
# compose


@cache
def compose() -> dict[str, Any]:
    docs = load_docs(COMPOSE_FILE)
    assert len(docs) == 1
    doc: dict[str, Any] = docs[0]
    assert isinstance(doc.get("services"), dict) and doc["services"]
    return doc


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def is_vigil_service(svc: dict[str, Any]) -> bool:
    if "build" in svc:
        return True
    return image_name(compose_default(str(svc.get("image", "")))) == "vigil"


def is_nats_service(svc: dict[str, Any]) -> bool:
    return image_name(compose_default(str(svc.get("image", "")))) == "nats"


def vigil_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose_services().items() if is_vigil_service(svc)}


def nats_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose_services().items() if is_nats_service(svc)}


def compose_argv(svc: dict[str, Any]) -> list[str]:
    return [compose_default(a) for a in argv_of(svc.get("command"))]


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def replicas(svc: dict[str, Any]) -> int:
    return int((svc.get("deploy") or {}).get("replicas", 1))


def services_running(subcommand: str) -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in vigil_services().items() if compose_argv(svc)[:1] == [subcommand]
    }


def test_compose_vigil_commands_use_known_subcommands() -> None:
    services = vigil_services()
    assert services, "no Vigil service in compose"
    for name, svc in services.items():
        entrypoint = argv_of(svc.get("entrypoint"))
        assert entrypoint in ([], ["vigil"]), f"{name}: entrypoint must be the vigil script"
        argv = compose_argv(svc)
        assert argv, f"{name}: no command (the image's default is --help)"
        assert argv[0] in SUBCOMMANDS, f"{name}: unknown subcommand {argv[0]!r}"
    for sub in (*CLUSTER_WIDE, *NODE_SERVICES):
        assert services_running(sub), f"compose runs no `vigil {sub}`"


def test_compose_membership_and_placement_have_two_replicas() -> None:
    for sub in CLUSTER_WIDE:
        total = sum(replicas(svc) for svc in services_running(sub).values())
        assert total >= 2, f"`vigil {sub}` needs >= 2 replicas, compose has {total}"


def loopback_nats_ports() -> dict[int, str]:
    """Host port on 127.0.0.1 -> the NATS service whose client port it publishes."""
    ports: dict[int, str] = {}
    for name, svc in nats_services().items():
        for spec in svc.get("ports") or []:
            if isinstance(spec, dict):
                host_ip, published, target = (
                    spec.get("host_ip", ""),
                    spec.get("published"),
                    spec.get("target"),
                )
            else:
                parts = compose_default(str(spec)).split("/")[0].split(":")
                if len(parts) != 3:
                    continue
                host_ip, published, target = parts
            if host_ip in ("127.0.0.1", "localhost") and int(target) == NATS_CLIENT_PORT:
                ports[int(published)] = name
    return ports


def nats_servers_reached(name: str, svc: dict[str, Any]) -> set[str]:
    """Which NATS compose services the service's URLs lead to (asserting each URL does)."""
    env = compose_env(svc)
    value = flag_value(compose_argv(svc), "--nats") or compose_default(
        env.get("VIGIL_NATS_URL", "")
    )
    assert value, f"{name}: no NATS URL (VIGIL_NATS_URL or --nats)"
    nats = nats_services()
    reached = set()
    if svc.get("network_mode") == "host":
        published = loopback_nats_ports()
        for host, port in split_urls(value):
            assert host in ("127.0.0.1", "localhost"), (
                f"{name}: host-network service must use the loopback-published ports, not {host}"
            )
            assert port in published, f"{name}: nothing publishes NATS on 127.0.0.1:{port}"
            reached.add(published[port])
    else:
        networks = set(svc.get("networks") or ["default"])
        for host, port in split_urls(value):
            target = next((n for n, s in nats.items() if host in (n, s.get("hostname"))), None)
            assert target is not None, f"{name}: {host} is not a NATS service"
            assert port == NATS_CLIENT_PORT, f"{name}: {host}:{port} is not the client port"
            shared = networks & set(nats[target].get("networks") or ["default"])
            assert shared, f"{name}: shares no network with {target}"
            reached.add(target)
    return reached


def test_compose_every_vigil_service_gets_all_nats_servers() -> None:
    nats = set(nats_services())
    for name, svc in vigil_services().items():
        reached = nats_servers_reached(name, svc)
        assert reached == nats, f"{name}: reaches {sorted(reached)}, not all of {sorted(nats)}"


def test_compose_nats_is_a_jetstream_cluster_of_three() -> None:
    nats = nats_services()
    assert len(nats) == 3, f"expected 3 NATS servers, found {sorted(nats)}"
    declared_volumes = set((compose().get("volumes") or {}).keys())
    names, cluster_names = set(), set()
    for name, svc in nats.items():
        argv = compose_argv(svc)
        assert argv and argv[0] not in SUBCOMMANDS
        assert has_flag(argv, "-js", "--jetstream"), f"{name}: JetStream is not enabled (-js)"
        store = flag_value(argv, "-sd", "--store_dir")
        assert store, f"{name}: no JetStream store dir (-sd)"
        mounts = {}
        for vol in svc.get("volumes") or []:
            source, _, rest = str(vol).partition(":")
            mounts[rest.split(":")[0]] = source
        assert store in mounts, f"{name}: the store dir {store} is not on a volume"
        source = mounts[store]
        assert source.startswith((".", "/", "$")) or source in declared_volumes, (
            f"{name}: volume {source} is not declared"
        )
        server_name = flag_value(argv, "-n", "--name", "--server_name")
        assert server_name, f"{name}: JetStream clustering needs a unique server name"
        names.add(server_name)
        cluster_names.add(flag_value(argv, "--cluster_name"))
        assert flag_value(argv, "--cluster"), f"{name}: no cluster listen URL"
        routes = flag_value(argv, "--routes") or ""
        route_hosts = {host for host, _ in split_urls(routes)} if routes else set()
        others = {n for n in nats if n != name}
        others_hostnames = {nats[n].get("hostname", n) for n in others}
        assert others <= route_hosts or others_hostnames <= route_hosts, (
            f"{name}: routes {sorted(route_hosts)} miss some of {sorted(others)}"
        )
    assert len(names) == 3, "NATS server names must be unique"
    assert len(cluster_names) == 1 and None not in cluster_names, "one --cluster_name for all"


def test_compose_node_services() -> None:
    for name, svc in services_running("address").items():
        caps = set(svc.get("cap_add") or [])
        assert {"NET_ADMIN", "NET_RAW"} <= caps, f"{name}: address needs NET_ADMIN and NET_RAW"
        assert svc.get("network_mode") == "host", f"{name}: address needs the host network"
        assert has_flag(compose_argv(svc), "--interface"), f"{name}: no --interface"
        assert "user" not in svc or str(svc["user"]).split(":")[0] in ("0", "root")
    for name, svc in services_running("supervisor").items():
        assert svc.get("network_mode") == "host", f"{name}: supervisor needs the host network"
        assert svc.get("pid") == "host", f"{name}: supervisor needs the host PID namespace"
    for name, svc in {**services_running("address"), **services_running("supervisor")}.items():
        env = compose_env(svc)
        argv = compose_argv(svc)
        assert has_flag(argv, "--node") or "${VIGIL_NODE" in env.get("VIGIL_NODE", ""), (
            f"{name}: the node name must come from VIGIL_NODE"
        )


# --------------------------------------------------------------------------------------------
# Kubernetes


@cache
def kustomization() -> dict[str, Any]:
    docs = load_docs(KUSTOMIZATION)
    assert len(docs) == 1 and docs[0].get("kind") == "Kustomization"
    doc: dict[str, Any] = docs[0]
    return doc


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in yaml_files(K8S_DIR):
        if path == KUSTOMIZATION:
            continue
        for doc in load_docs(path):
            out.append((str(path.relative_to(K8S_DIR)), doc))
    return out


def objects_of(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_objects() if doc.get("kind") == kind}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    if kind in WORKLOAD_KINDS:
        return dict(doc["spec"]["template"]["spec"])
    if kind == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    if kind == "Pod":
        return dict(doc["spec"])
    return None


def workloads() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind/name, object, pod spec) for every workload."""
    out = []
    for _, doc in k8s_objects():
        spec = pod_spec(doc)
        if spec is not None:
            out.append((f"{doc['kind']}/{doc['metadata']['name']}", doc, spec))
    return out


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def vigil_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind/name:container, pod spec, container) for every container of the Vigil image."""
    out = []
    for where, _, spec in workloads():
        for c in all_containers(spec):
            if image_name(c["image"]) == "vigil":
                out.append((f"{where}:{c['name']}", spec, c))
    return out


def subcommand(container: dict[str, Any]) -> str | None:
    argv = argv_of(container.get("command")) + argv_of(container.get("args"))
    if argv[:1] == ["vigil"]:
        argv = argv[1:]
    return argv[0] if argv else None


def containers_running(sub: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [item for item in vigil_containers() if subcommand(item[2]) == sub]


def container_env(c: dict[str, Any]) -> dict[str, Any]:
    """Env name -> literal value, or the valueFrom mapping; ConfigMap references resolved."""
    configmaps = objects_of("ConfigMap")
    env: dict[str, Any] = {}
    for source in c.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is None:
            continue
        assert ref["name"] in configmaps, f"envFrom: no ConfigMap {ref['name']}"
        prefix = source.get("prefix", "")
        for key, value in (configmaps[ref["name"]].get("data") or {}).items():
            env[prefix + key] = value
    for item in c.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            assert ref["name"] in configmaps, f"env {item['name']}: no ConfigMap {ref['name']}"
            data = configmaps[ref["name"]].get("data") or {}
            assert ref["key"] in data, f"env {item['name']}: ConfigMap has no key {ref['key']}"
            env[item["name"]] = data[ref["key"]]
        else:
            env[item["name"]] = item.get("valueFrom", {})
    return env


def nats_statefulset() -> dict[str, Any]:
    found = [
        doc
        for doc in objects_of("StatefulSet").values()
        if any(image_name(c["image"]) == "nats" for c in all_containers(pod_spec(doc) or {}))
    ]
    assert len(found) == 1, "expected exactly one NATS StatefulSet in k8s/"
    return found[0]


def nats_config_text(sts: dict[str, Any]) -> str:
    """The NATS config file the StatefulSet's container is started with ("" if none)."""
    spec = pod_spec(sts) or {}
    container = next(c for c in spec["containers"] if image_name(c["image"]) == "nats")
    argv = argv_of(container.get("command")) + argv_of(container.get("args"))
    config = flag_value(argv, "-c", "--config")
    if config is None:
        return ""
    path = PurePosixPath(config)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    configmaps = objects_of("ConfigMap")
    for mount in container.get("volumeMounts") or []:
        if PurePosixPath(mount["mountPath"]) != path.parent:
            continue
        volume = volumes[mount["name"]]
        # a ConfigMap, or one projected with the secrets it includes (auth.conf, TLS)
        sources = [volume] if "configMap" in volume else volume.get("projected", {}).get("sources")
        names = [s["configMap"]["name"] for s in sources or [] if "configMap" in s]
        assert names, f"NATS config {config} is not from a ConfigMap"
        data = configmaps[names[0]].get("data") or {}
        assert path.name in data, f"ConfigMap {names[0]} lacks {path.name}"
        return str(data[path.name])
    raise AssertionError(f"NATS config {config} is not mounted")


def test_k8s_vigil_commands_use_known_subcommands() -> None:
    containers = vigil_containers()
    assert containers, "no Vigil container in k8s/"
    for where, _, c in containers:
        command = argv_of(c.get("command"))
        assert command in ([], ["vigil"]), f"{where}: command must be the vigil entrypoint"
        sub = subcommand(c)
        assert sub in SUBCOMMANDS, f"{where}: unknown subcommand {sub!r}"
        defined = {item["name"] for item in c.get("env") or []} | set(container_env(c))
        for arg in argv_of(c.get("args")):
            for var in re.findall(r"\$\((\w+)\)", arg):
                assert var in defined, f"{where}: $({var}) in args is not defined in env"
    running = {subcommand(c) for _, _, c in containers}
    for sub in (*CLUSTER_WIDE, *NODE_SERVICES, "apply"):
        assert sub in running, f"k8s/ runs no `vigil {sub}`"


def test_k8s_every_vigil_container_gets_all_nats_servers() -> None:
    sts = nats_statefulset()
    sts_name, service, count = (
        sts["metadata"]["name"],
        sts["spec"]["serviceName"],
        int(sts["spec"]["replicas"]),
    )
    expected = {f"{sts_name}-{i}" for i in range(count)}
    for where, spec, c in vigil_containers():
        env = container_env(c)
        value = flag_value(argv_of(c.get("args")), "--nats") or env.get("VIGIL_NATS_URL")
        assert isinstance(value, str) and value, f"{where}: no NATS URL"
        pods = set()
        for host, port in split_urls(value):
            labels = host.split(".")
            assert len(labels) >= 2 and labels[1] == service, (
                f"{where}: {host} is not a pod of the NATS headless service {service}"
            )
            assert labels[0] in expected, f"{where}: {host} is not one of {sorted(expected)}"
            assert port == NATS_CLIENT_PORT
            pods.add(labels[0])
        assert pods == expected, f"{where}: reaches {sorted(pods)}, not all of {sorted(expected)}"
        if spec.get("hostNetwork"):
            assert spec.get("dnsPolicy") == "ClusterFirstWithHostNet", (
                f"{where}: hostNetwork pods need dnsPolicy ClusterFirstWithHostNet for {service}"
            )


def test_k8s_nats_is_a_jetstream_statefulset_of_three() -> None:
    sts = nats_statefulset()
    assert int(sts["spec"]["replicas"]) == 3
    services = objects_of("Service")
    headless = services.get(sts["spec"]["serviceName"])
    assert headless is not None, "the NATS StatefulSet's serviceName has no Service"
    assert headless["spec"].get("clusterIP") == "None", "the NATS service must be headless"
    spec = pod_spec(sts) or {}
    container = next(c for c in spec["containers"] if image_name(c["image"]) == "nats")
    argv = argv_of(container.get("command")) + argv_of(container.get("args"))
    config = nats_config_text(sts)
    assert has_flag(argv, "-js", "--jetstream") or nats_conf_has_jetstream(config), (
        "NATS must run with JetStream"
    )
    store = flag_value(argv, "-sd", "--store_dir")
    match = re.search(r"store_dir\s*[:=]\s*\"?([^\s\"]+)", config)
    store = store or (match.group(1) if match else None)
    assert store, "no JetStream store_dir"
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    assert mounts.get(store) in claims, f"JetStream store {store} is not on a PVC"
    if config:
        assert re.search(r"server_name\s*[:=]", config), "JetStream clustering needs server_name"
        routes = set(re.findall(r"nats://([\w.-]+):6222", config))
        service = sts["spec"]["serviceName"]
        for i in range(3):
            pod = f"{sts['metadata']['name']}-{i}"
            assert any(r.split(".")[:2] == [pod, service] for r in routes), (
                f"NATS routes miss {pod}.{service}"
            )


def test_k8s_address_and_supervisor() -> None:
    daemonsets = objects_of("DaemonSet")
    for sub in NODE_SERVICES:
        found = containers_running(sub)
        assert found, f"no `vigil {sub}` container"
        for where, _, _ in found:
            assert where.startswith("DaemonSet/"), f"{where}: {sub} runs once per node"
    for where, spec, c in containers_running("address"):
        caps = set((c.get("securityContext") or {}).get("capabilities", {}).get("add") or [])
        assert {"NET_ADMIN", "NET_RAW"} <= caps, f"{where}: address needs NET_ADMIN and NET_RAW"
        assert spec.get("hostNetwork") is True, f"{where}: address needs hostNetwork"
        assert has_flag(argv_of(c.get("args")), "--interface"), f"{where}: no --interface"
        user = (c.get("securityContext") or {}).get("runAsUser", 0)
        assert user == 0, f"{where}: address must run as root for NET_ADMIN to be effective"
    for where, spec, _ in containers_running("supervisor"):
        assert spec.get("hostPID") is True, f"{where}: supervisor needs hostPID"
    for sub in NODE_SERVICES:
        for where, _, c in containers_running(sub):
            node = flag_value(argv_of(c.get("args")), "--node")
            env = container_env(c)
            if node is None:
                assert "VIGIL_NODE" in env, f"{where}: no --node and no VIGIL_NODE"
                continue
            var = re.fullmatch(r"\$\((\w+)\)", node)
            assert var is not None, f"{where}: --node must come from the downward API"
            field = env.get(var.group(1))
            assert isinstance(field, dict), f"{where}: $({var.group(1)}) is not from valueFrom"
            assert field.get("fieldRef", {}).get("fieldPath") == "spec.nodeName"
    assert "vigil-node" in daemonsets, "DaemonSet vigil-node is missing"
    node_subs = {
        subcommand(c) for c in daemonsets["vigil-node"]["spec"]["template"]["spec"]["containers"]
    }
    assert set(NODE_SERVICES) <= node_subs, "vigil-node runs address and supervisor"


def test_k8s_membership_and_placement_have_two_replicas() -> None:
    for sub in CLUSTER_WIDE:
        found = containers_running(sub)
        assert found, f"no `vigil {sub}` container"
        total = 0
        for where, _, _ in found:
            kind, name = where.split(":")[0].split("/")
            assert kind == "Deployment", f"{where}: {sub} should be a Deployment"
            total += int(objects_of("Deployment")[name]["spec"].get("replicas", 1))
        assert total >= 2, f"`vigil {sub}` needs >= 2 replicas, has {total}"


def test_k8s_every_container_has_requests_and_limits() -> None:
    for where, _, spec in workloads():
        for c in all_containers(spec):
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                got = set(resources.get(part) or {})
                assert {"cpu", "memory"} <= got, f"{where}:{c['name']}: {part} lack cpu/memory"


def test_k8s_apply_job_reads_a_consistent_cluster_file() -> None:
    jobs = containers_running("apply")
    assert jobs, "no `vigil apply` Job"
    configmaps = objects_of("ConfigMap")
    for where, spec, c in jobs:
        assert where.startswith("Job/vigil-apply:"), f"{where}: expected Job vigil-apply"
        path = flag_value(argv_of(c.get("args")), "-f", "--file")
        assert path == "/etc/vigil/cluster/cluster.yaml", f"{where}: apply -f {path}"
        pure = PurePosixPath(path)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mount = next(
            (
                m
                for m in c.get("volumeMounts") or []
                if PurePosixPath(m["mountPath"]) == pure.parent
            ),
            None,
        )
        assert mount is not None, f"{where}: nothing is mounted at {pure.parent}"
        configmap = volumes[mount["name"]].get("configMap")
        assert configmap is not None, f"{where}: {pure.parent} is not a ConfigMap"
        data = configmaps[configmap["name"]].get("data") or {}
        assert pure.name in data, f"ConfigMap {configmap['name']} has no {pure.name}"
        check_cluster_file(yaml.safe_load(data[pure.name]))


def check_cluster_file(doc: dict[str, Any]) -> None:
    assert doc["cluster"]["name"]
    nodes = [n["name"] for n in doc["nodes"]]
    assert nodes and len(set(nodes)) == len(nodes), "node names must be unique"
    for name in nodes:
        assert VIGIL_NAME.match(name), f"node name {name!r} is not a valid Vigil name"
    groups = doc.get("groups") or []
    assert groups, "the example should have a group"
    for group in groups:
        assert VIGIL_NAME.match(group["name"])
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", group["address"])
        assert group["preferred"] in nodes, f"{group['name']}: preferred is not a node"
        for node in group.get("possible") or []:
            assert node in nodes, f"{group['name']}: possible node {node} is not a node"
        assert group["app"]["command"]


def test_k8s_example_cluster_file_passes_the_real_loader() -> None:
    from vigil.core import config

    found = [
        doc["data"]["cluster.yaml"]
        for _, doc in k8s_objects()
        if doc.get("kind") == "ConfigMap" and "cluster.yaml" in (doc.get("data") or {})
    ]
    assert found, "no ConfigMap in k8s/ carries a cluster.yaml"
    for text in found:
        config.load_text(text)


def test_k8s_namespace() -> None:
    assert "vigil" in objects_of("Namespace"), "Namespace vigil is missing"
    namespace = kustomization().get("namespace")
    for path, doc in k8s_objects():
        if doc["kind"] in CLUSTER_SCOPED_KINDS:
            continue
        ns = doc["metadata"].get("namespace", namespace)
        assert ns == "vigil", f"{path}: {doc['kind']}/{doc['metadata']['name']} not in vigil"


def test_kustomization_lists_every_manifest() -> None:
    listed = [str(r) for r in kustomization().get("resources") or []]
    assert len(listed) == len(set(listed)), "duplicate resources in kustomization.yaml"
    for entry in listed:
        assert (K8S_DIR / entry).is_file(), f"kustomization lists {entry}, which does not exist"
    on_disk = {
        str(path.relative_to(K8S_DIR)) for path in yaml_files(K8S_DIR) if path != KUSTOMIZATION
    }
    assert set(listed) == on_disk, (
        f"not listed: {sorted(on_disk - set(listed))}; listed but absent: "
        f"{sorted(set(listed) - on_disk)}"
    )


# --------------------------------------------------------------------------------------------
# compose and Kubernetes agree: the same service runs the same way in both


SERVICES = ("membership", "placement", "address", "supervisor")


def k8s_running(sub: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, container) of the one Kubernetes container running ``vigil <sub>``."""
    found = [(spec, c) for _, spec, c in vigil_containers() if subcommand(c) == sub]
    assert len(found) == 1, f"{len(found)} Kubernetes containers run `vigil {sub}`"
    return found[0]


def compose_running(sub: str) -> dict[str, Any]:
    found = list(services_running(sub).values())
    assert len(found) == 1, f"{len(found)} compose services run `vigil {sub}`"
    return found[0]


def flags(argv: list[str], env: set[str]) -> set[str]:
    """The options given, counting ``--node`` when it comes from VIGIL_NODE instead."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return given | ({"--node"} if "VIGIL_NODE" in env else set())


def k8s_env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env") or []}


def k8s_user(spec: dict[str, Any], container: dict[str, Any]) -> tuple[int, int]:
    """(uid, gid) a container runs as; the image's default is root."""
    pod = spec.get("securityContext") or {}
    own = container.get("securityContext") or {}
    uid = own.get("runAsUser", pod.get("runAsUser", 0))
    return int(uid), int(own.get("runAsGroup", pod.get("runAsGroup", 0 if uid == 0 else uid)))


def compose_user(svc: dict[str, Any]) -> tuple[int, int]:
    user = str(svc.get("user", "0"))
    uid, _, gid = user.partition(":")
    uid = "0" if uid == "root" else uid
    return int(uid), int(gid or (0 if uid == "0" else uid))


@pytest.mark.parametrize("sub", SERVICES)
def test_compose_and_k8s_agree_on_commands(sub: str) -> None:
    svc = compose_running(sub)
    _, container = k8s_running(sub)
    k8s_argv = argv_of(container.get("command")) + argv_of(container.get("args"))
    if k8s_argv[:1] == ["vigil"]:
        k8s_argv = k8s_argv[1:]
    ours = flags(compose_argv(svc), set(compose_env(svc)))
    theirs = flags(k8s_argv, k8s_env_names(container))
    assert ours == theirs, f"{sub}: compose gives {sorted(ours)}, Kubernetes {sorted(theirs)}"


@pytest.mark.parametrize("sub", SERVICES)
def test_compose_and_k8s_agree_on_capabilities(sub: str) -> None:
    svc = compose_running(sub)
    _, container = k8s_running(sub)
    caps = (container.get("securityContext") or {}).get("capabilities") or {}
    assert set(svc.get("cap_add") or []) == set(caps.get("add") or []), sub
    assert set(svc.get("cap_drop") or []) == set(caps.get("drop") or []), sub


@pytest.mark.parametrize("sub", SERVICES)
def test_compose_and_k8s_agree_on_users(sub: str) -> None:
    svc = compose_running(sub)
    spec, container = k8s_running(sub)
    assert compose_user(svc) == k8s_user(spec, container), sub


def test_compose_and_k8s_agree_on_host_namespaces() -> None:
    for sub, compose_key, k8s_key in (
        ("address", "network_mode", "hostNetwork"),
        ("supervisor", "network_mode", "hostNetwork"),
        ("supervisor", "pid", "hostPID"),
    ):
        spec, _ = k8s_running(sub)
        assert compose_running(sub).get(compose_key) == "host", (sub, compose_key)
        assert spec.get(k8s_key) is True, (sub, k8s_key)


def test_compose_and_k8s_agree_on_nats() -> None:
    servers = nats_services()
    (statefulset,) = (
        doc
        for _, doc in k8s_objects()
        if doc.get("kind") == "StatefulSet"
        and any(image_name(c["image"]) == "nats" for c in all_containers(pod_spec(doc) or {}))
    )
    assert len(servers) == statefulset["spec"]["replicas"] == 3
    (conf,) = (
        str(doc["data"][key])
        for doc in objects_of("ConfigMap").values()
        for key in (doc.get("data") or {})
        if key.endswith(".conf")
    )
    k8s_cluster = re.search(r"cluster\s*\{[^}]*?\bname:\s*(\S+)", conf)
    assert k8s_cluster is not None and nats_conf_has_jetstream(conf)
    for name, svc in servers.items():
        argv = compose_argv(svc)
        assert "-js" in argv, f"{name}: JetStream off"
        assert f"--cluster_name={k8s_cluster.group(1)}" in argv, name


# The role whose credentials each Vigil command runs with (docs/security.md): its own, never
# another's. The CLI container (default `status`) is the operator's.
ROLES = {
    "membership": "membership.nk",
    "placement": "placement.nk",
    "address": "node-",
    "supervisor": "node-",
    "apply": "operator.nk",
    "status": "operator.nk",
}
SECURE = PurePosixPath("/etc/vigil/secure")


def own_role(sub: str, creds: str) -> bool:
    name = PurePosixPath(creds).name
    return name == ROLES[sub] or (ROLES[sub] == "node-" and name.startswith("node-"))


def test_compose_every_vigil_service_has_its_own_credentials_and_the_ca() -> None:
    for name, svc in vigil_services().items():
        sub = compose_argv(svc)[0]
        env = compose_env(svc)
        creds = compose_default(env.get("VIGIL_CREDS", ""))
        ca = env.get("VIGIL_TLS_CA", "")
        assert own_role(sub, creds), f"{name} (`vigil {sub}`) runs with {creds!r}"
        assert ca == str(SECURE / "ca.pem"), f"{name}: VIGIL_TLS_CA is {ca!r}"
        mounted = {
            compose_default(str(v)).split(":")[1]
            for v in svc.get("volumes") or []
            if str(v).count(":") >= 2
        }
        assert {creds, ca} <= mounted, f"{name}: {creds} or {ca} not mounted"
        reader = str(SECURE / "creds/reader.nk")  # for the health check
        others = {m for m in mounted if m.endswith(".nk")} - {creds, reader}
        assert not others, f"{name} can read other roles' credentials: {sorted(others)}"


def test_compose_nats_servers_load_the_secure_config() -> None:
    for name, svc in nats_services().items():
        assert flag_value(compose_argv(svc), "-c", "--config") == str(SECURE / "cluster.conf")
        mounted = {compose_default(str(v)).split(":")[1] for v in svc.get("volumes") or []}
        needed = {"cluster.conf", "auth.conf", "route-tls.conf", "server.pem", "server-key.pem"}
        assert {str(SECURE / f) for f in needed} <= mounted, name
        assert not any(m.endswith((".nk", "ca-key.pem")) for m in mounted), name


def test_k8s_every_vigil_container_has_its_own_credentials_and_the_ca() -> None:
    for where, spec, c in vigil_containers():
        sub = subcommand(c)
        assert sub is not None
        env = {e["name"]: e.get("value", "") for e in c.get("env") or []}
        creds, ca = env.get("VIGIL_CREDS", ""), env.get("VIGIL_TLS_CA", "")
        assert own_role(sub, creds), f"{where} (`vigil {sub}`) runs with {creds!r}"
        assert ca == str(SECURE / "ca.pem"), f"{where}: VIGIL_TLS_CA is {ca!r}"
        mount = next(m for m in c.get("volumeMounts") or [] if m["mountPath"] == str(SECURE))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        sources = [volume["secret"]] if "secret" in volume else [
            s["secret"] for s in volume["projected"]["sources"] if "secret" in s
        ]  # fmt: skip
        paths = {i["path"] for s in sources for i in s.get("items") or []}
        whole = {s.get("secretName", s.get("name")) for s in sources if not s.get("items")}
        assert "ca.pem" in paths, f"{where}: no CA"
        if ROLES[sub] == "node-":  # one key per node: the pod picks its own by node name
            assert whole == {"vigil-node-creds"}, f"{where}: mounts {whole}"
        else:
            assert not whole and paths == {"ca.pem", PurePosixPath(creds).name}, (
                f"{where}: mounts {sorted(paths)}"
            )
