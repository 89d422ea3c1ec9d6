"""Loading and validating the cluster file: all of it is valid, or none of it is applied.

Errors name the field as an operator reads the file: ``groups[1].preferred: unknown node 'n9'``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from vigil.wire.cluster import App, ClusterSpec, Monitor

from .durations import parse_duration

# Names become NATS subject tokens and KV keys: keep them to a safe alphabet.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_DURATIONS: tuple[tuple[str, ...], ...] = (
    ("cluster", "timing", "heartbeat"),
    ("cluster", "timing", "lease"),
)
_GROUP_DURATIONS: tuple[tuple[str, ...], ...] = (
    ("app", "stop_timeout"),
    ("app", "start_timeout"),
    ("restart", "window"),
    ("restart", "backoff"),
    ("restart", "failure_timeout"),
    ("failback_delay",),
)
_MONITOR_DURATIONS = ("interval", "timeout")


class ConfigError(ValueError):
    """The cluster file is invalid; ``field`` is a path like ``groups[1].preferred``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def load_file(path: str | Path) -> ClusterSpec:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    return load_text(text)


def load_text(text: str) -> ClusterSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise ConfigError(where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return load_data(raw)


def load_data(raw: Any) -> ClusterSpec:
    if not isinstance(raw, dict):
        raise ConfigError("", "the cluster file must be a mapping with cluster, nodes and groups")
    _normalise_durations(raw)
    try:
        spec = msgspec.convert(raw, ClusterSpec)
    except msgspec.ValidationError as exc:
        raise _from_msgspec(exc) from None
    validate(spec)
    return spec


def _normalise_durations(raw: dict[str, Any]) -> None:
    def fix(obj: Any, path: tuple[str, ...], where: str) -> None:
        *parents, leaf = path
        for key in parents:
            if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
                return
            obj = obj[key]
        if isinstance(obj, dict) and leaf in obj:
            try:
                obj[leaf] = parse_duration(obj[leaf])
            except ValueError as exc:
                raise ConfigError(f"{where}{'.'.join(path)}", str(exc)) from None

    for path in _DURATIONS:
        fix(raw, path, "")
    groups = raw.get("groups")
    if isinstance(groups, list):
        for i, group in enumerate(groups):
            for path in _GROUP_DURATIONS:
                fix(group, path, f"groups[{i}].")
            monitors = group.get("monitors") if isinstance(group, dict) else None
            for j, monitor in enumerate(monitors if isinstance(monitors, list) else []):
                for key in _MONITOR_DURATIONS:
                    fix(monitor, (key,), f"groups[{i}].monitors[{j}].")


def _from_msgspec(exc: msgspec.ValidationError) -> ConfigError:
    # msgspec says "Expected `str`, got `int` - at `$.groups[1].name`"; we say it field first.
    text = str(exc)
    message, _, where = text.partition(" - at `")
    field = where.rstrip("`").removeprefix("$").lstrip(".")
    message = message.replace("`", "'")
    if message.startswith("Object contains unknown field"):
        name = message.split("'")[1]
        field = f"{field}.{name}" if field else name
        message = "unknown key"
    elif message.startswith("Object missing required field"):
        name = message.split("'")[1]
        field = f"{field}.{name}" if field else name
        message = "required key is missing"
    return ConfigError(field, message[:1].lower() + message[1:])


def validate(spec: ClusterSpec) -> None:
    """Checks that need more than types: names, references, addresses, timing arithmetic."""
    if not _NAME.match(spec.cluster.name):
        raise ConfigError("cluster.name", f"invalid name {spec.cluster.name!r}")
    timing = spec.cluster.timing
    if timing.lease < 4 * timing.heartbeat:
        raise ConfigError(
            "cluster.timing.lease",
            f"must be at least 4 x heartbeat ({4 * timing.heartbeat:g}s), see docs/safety.md",
        )
    if timing.heartbeat < 0.02:
        raise ConfigError("cluster.timing.heartbeat", "must be at least 20ms")
    if not spec.nodes:
        raise ConfigError("nodes", "at least one node is required")
    nodes: set[str] = set()
    for i, node in enumerate(spec.nodes):
        if not _NAME.match(node.name):
            raise ConfigError(
                f"nodes[{i}].name", f"invalid name {node.name!r} (use a-z, 0-9, -, _)"
            )
        if node.name in nodes:
            raise ConfigError(f"nodes[{i}].name", f"duplicate node {node.name!r}")
        if not _IFNAME.match(node.interface):
            raise ConfigError(f"nodes[{i}].interface", f"invalid interface {node.interface!r}")
        nodes.add(node.name)
    groups: set[str] = set()
    addresses: dict[ipaddress.IPv4Address, str] = {}
    for i, group in enumerate(spec.groups):
        at = f"groups[{i}]"
        if not _NAME.match(group.name):
            raise ConfigError(f"{at}.name", f"invalid name {group.name!r} (use a-z, 0-9, -, _)")
        if group.name in groups:
            raise ConfigError(f"{at}.name", f"duplicate group {group.name!r}")
        groups.add(group.name)
        try:
            iface = ipaddress.IPv4Interface(group.address)
        except ValueError:
            raise ConfigError(
                f"{at}.address", f"not an IPv4 address with prefix: {group.address!r}"
            ) from None
        if "/" not in group.address:
            raise ConfigError(f"{at}.address", f"needs a prefix length, like {iface.ip}/24")
        if iface.ip in addresses:
            raise ConfigError(
                f"{at}.address", f"{iface.ip} is already used by group {addresses[iface.ip]!r}"
            )
        addresses[iface.ip] = group.name
        if group.preferred not in nodes:
            raise ConfigError(f"{at}.preferred", f"unknown node {group.preferred!r}")
        seen = {group.preferred}
        for j, name in enumerate(group.possible):
            if name not in nodes:
                raise ConfigError(f"{at}.possible[{j}]", f"unknown node {name!r}")
            if name in seen:
                raise ConfigError(f"{at}.possible[{j}]", f"node {name!r} is listed twice")
            seen.add(name)
        _validate_app(group.app, f"{at}.app")
        for j, monitor in enumerate(group.monitors):
            _validate_monitor(monitor, f"{at}.monitors[{j}]")
        if group.restart.max < 0:
            raise ConfigError(f"{at}.restart.max", "must be 0 or more")
    services: set[str] = set()
    for i, service in enumerate(spec.services):
        at = f"services[{i}]"
        if not _NAME.match(service.name):
            raise ConfigError(f"{at}.name", f"invalid name {service.name!r} (use a-z, 0-9, -, _)")
        if service.name in services:
            raise ConfigError(f"{at}.name", f"duplicate service {service.name!r}")
        if service.name in groups:
            raise ConfigError(
                f"{at}.name",
                f"{service.name!r} is a group's name (every group "
                "is already a service of its own name)",
            )
        services.add(service.name)
        if not service.preferred:
            raise ConfigError(f"{at}.preferred", "at least one group is required")
        seen_groups: set[str] = set()
        for key in ("preferred", "available"):
            for j, name in enumerate(getattr(service, key)):
                if name not in groups:
                    raise ConfigError(f"{at}.{key}[{j}]", f"unknown group {name!r}")
                if name in seen_groups:
                    raise ConfigError(f"{at}.{key}[{j}]", f"group {name!r} is listed twice")
                seen_groups.add(name)


def _validate_app(app: App, at: str) -> None:
    if (app.command is None) == (app.start is None):
        raise ConfigError(at, "give either 'command' (a foreground app) or 'start' (a daemon)")
    if app.command is not None:
        if not app.command.strip():
            raise ConfigError(f"{at}.command", "must not be empty")
        for key in ("stop", "check"):
            if getattr(app, key) is not None:
                raise ConfigError(f"{at}.{key}", "only for a daemon app given with 'start'")
    elif app.stop is None or app.check is None:
        missing = "stop" if app.stop is None else "check"
        raise ConfigError(f"{at}.{missing}", "a daemon app given with 'start' needs it")
    if app.user is not None and not _USER.match(app.user):
        raise ConfigError(f"{at}.user", f"invalid user name {app.user!r}")
    if app.user == "root":
        raise ConfigError(f"{at}.user", "leave 'user' out to run as the supervisor's user")


def _validate_monitor(monitor: Monitor, at: str) -> None:
    given = [k for k in ("tcp", "http", "exec") if getattr(monitor, k) is not None]
    if len(given) != 1:
        raise ConfigError(at, "give exactly one of tcp, http, exec")
    if monitor.tcp is not None and not 0 < monitor.tcp < 65536:
        raise ConfigError(f"{at}.tcp", f"not a port: {monitor.tcp}")
    if monitor.http is not None and not monitor.http.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.http", f"not an http(s) URL: {monitor.http!r}")
    if monitor.failures < 1:
        raise ConfigError(f"{at}.failures", "must be 1 or more")


def encode(spec: ClusterSpec) -> bytes:
    return msgspec.json.encode(spec)


def decode(data: bytes) -> ClusterSpec:
    spec = msgspec.json.decode(data, type=ClusterSpec)
    validate(spec)
    return spec
