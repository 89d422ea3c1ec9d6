"""Loading and validating the cluster file: all of it is valid, or none of it is applied.

Errors name the field as an operator reads the file: ``groups[1].preferred: unknown node 'n9'``.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import string
from pathlib import Path
from typing import Any

import msgspec

from vigil.wire.cluster import App, ClusterSpec, Fence, Monitor

from . import strict_yaml
from .durations import parse_duration

# Names become NATS subject tokens and KV keys: keep them to a safe alphabet. Patterns are used
# with fullmatch: ``$`` alone would let a trailing newline through.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Linux takes up to IFNAMSIZ-1 = 15 bytes, no '/', ':' or whitespace, never "." or "..".
_IFNAME = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# fence-agents' option names (ip, username, password, plug, lanplus, passwd_script, ...)
_FENCE_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_FENCE_AGENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")  # a command name, no path
MAX_FENCE_TIMEOUT = 600.0
# The stored file travels as one NATS message: the server's default max_payload (1 MiB).
MAX_PAYLOAD = 1024 * 1024
MAX_FILE = 4 * MAX_PAYLOAD  # YAML is wordier than the JSON stored; read no more than this
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
        # field names come from the file too: keep the error on one line whatever they hold
        field = field if field.isprintable() else field.encode("unicode_escape").decode("ascii")
        message = message if message.isprintable() else _one_line(message, 400)
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def load_file(path: str | Path) -> ClusterSpec:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise ConfigError("", f"larger than {MAX_FILE} bytes: the bus could not hold it")
    return load_text(data)


def load_text(text: str | bytes) -> ClusterSpec:
    try:
        raw = strict_yaml.load(text)
    except strict_yaml.StrictYamlError as exc:
        raise ConfigError(exc.where, exc.message) from None
    return load_data(raw)


def load_data(raw: Any, *, max_payload: int | None = MAX_PAYLOAD) -> ClusterSpec:
    """``max_payload``: the largest encoded file the bus carries (None: checked by the caller
    against a server configured for more, as ``apply`` does with the server's own limit)."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the cluster file must be a mapping with cluster, nodes and groups")
    _normalise_durations(raw)
    try:
        spec = msgspec.convert(raw, ClusterSpec)
    except msgspec.ValidationError as exc:
        raise _from_msgspec(exc) from None
    validate(spec)
    size = len(encode(spec))
    if max_payload is not None and size > max_payload:
        raise ConfigError("", f"{size} bytes once encoded; the bus holds at most {max_payload}")
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
    fix(raw, ("cluster", "fence", "timeout"), "")
    _fence_options(raw.get("cluster"), "cluster.")
    nodes = raw.get("nodes")
    for i, node in enumerate(nodes if isinstance(nodes, list) else []):
        fix(node, ("fence", "timeout"), f"nodes[{i}].")
        _fence_options(node, f"nodes[{i}].")
    groups = raw.get("groups")
    if isinstance(groups, list):
        for i, group in enumerate(groups):
            for path in _GROUP_DURATIONS:
                fix(group, path, f"groups[{i}].")
            monitors = group.get("monitors") if isinstance(group, dict) else None
            for j, monitor in enumerate(monitors if isinstance(monitors, list) else []):
                for key in _MONITOR_DURATIONS:
                    fix(monitor, (key,), f"groups[{i}].monitors[{j}].")


def _fence_options(parent: Any, where: str) -> None:
    """An option value that YAML read as a number (``ipport: 623``) is refused by name, and
    never quoted: the agent reads text, and one of the values is a password."""
    fence = parent.get("fence") if isinstance(parent, dict) else None
    options = fence.get("options") if isinstance(fence, dict) else None
    for key, value in options.items() if isinstance(options, dict) else []:
        if not isinstance(value, str):
            at = f"{where}fence.options.{_one_line(str(key), 64)}"
            raise ConfigError(at, "must be a string: quote it")


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
    return ConfigError(field, _one_line(message[:1].lower() + message[1:]))


def _one_line(text: str, limit: int = 120) -> str:
    """Operator text quoted back in an error: control characters escaped, length bounded."""
    flat = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def _check_address(at: str, text: str) -> ipaddress.IPv4Address:
    """A group address: an IPv4 host address with its prefix, one a node can really hold."""
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise ConfigError(at, f"not an IPv4 address with prefix: {_one_line(repr(text))}") from None
    if "/" not in text:
        raise ConfigError(at, f"needs a prefix length, like {iface.ip}/24")
    ip, net = iface.ip, iface.network
    for bad, what in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_multicast, "a multicast address"),
        (ip == ipaddress.IPv4Address("255.255.255.255"), "the broadcast address"),
        (ip.is_reserved, "a reserved address"),
        (net.prefixlen < 31 and ip == net.network_address, f"the network address of {net}"),
        (net.prefixlen < 31 and ip == net.broadcast_address, f"the broadcast address of {net}"),
    ):
        if bad:
            raise ConfigError(at, f"{ip} is {what}")
    return ip


def _check_command(at: str, command: str | None, env: dict[str, str] | None = None) -> None:
    """Commands are split like a shell would (shlex) and run without one: they must split, as
    written and once the app's ``env`` is substituted into them (as the supervisor does)."""
    if command is None:
        return
    try:
        shlex.split(command)
        argv = shlex.split(string.Template(command).safe_substitute(env or {}))
    except ValueError as exc:
        raise ConfigError(at, f"does not parse as a command: {exc}") from None
    if not argv:
        raise ConfigError(at, "must not be empty")


def validate(spec: ClusterSpec) -> None:
    """Checks that need more than types: names, references, addresses, timing arithmetic."""
    if not valid_name(spec.cluster.name):
        raise ConfigError("cluster.name", f"invalid name {_one_line(repr(spec.cluster.name))}")
    _check_command("cluster.alert", spec.cluster.alert)
    if spec.cluster.fence is not None:
        _validate_fence(spec.cluster.fence, "cluster.fence")
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
        if not valid_name(node.name):
            raise ConfigError(
                f"nodes[{i}].name",
                f"invalid name {_one_line(repr(node.name))} (use a-z, 0-9, -, _)",
            )
        if node.name in nodes:
            raise ConfigError(f"nodes[{i}].name", f"duplicate node {node.name!r}")
        if not _IFNAME.fullmatch(node.interface) or node.interface in (".", ".."):
            raise ConfigError(
                f"nodes[{i}].interface",
                f"invalid interface {_one_line(repr(node.interface))} "
                "(at most 15 of A-Z a-z 0-9 _ . - @)",
            )
        if node.fence is not None:
            _validate_fence(node.fence, f"nodes[{i}].fence")
        nodes.add(node.name)
    groups: set[str] = set()
    addresses: dict[ipaddress.IPv4Address, str] = {}
    for i, group in enumerate(spec.groups):
        at = f"groups[{i}]"
        if not valid_name(group.name):
            raise ConfigError(
                f"{at}.name", f"invalid name {_one_line(repr(group.name))} (use a-z, 0-9, -, _)"
            )
        if group.name in groups:
            raise ConfigError(f"{at}.name", f"duplicate group {group.name!r}")
        groups.add(group.name)
        ip = _check_address(f"{at}.address", group.address)
        if ip in addresses:
            raise ConfigError(f"{at}.address", f"{ip} is already used by group {addresses[ip]!r}")
        addresses[ip] = group.name
        if group.preferred not in nodes:
            raise ConfigError(f"{at}.preferred", f"unknown node {_one_line(repr(group.preferred))}")
        seen = {group.preferred}
        for j, name in enumerate(group.possible):
            if name not in nodes:
                raise ConfigError(f"{at}.possible[{j}]", f"unknown node {_one_line(repr(name))}")
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
        if not valid_name(service.name):
            raise ConfigError(
                f"{at}.name", f"invalid name {_one_line(repr(service.name))} (use a-z, 0-9, -, _)"
            )
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
                    raise ConfigError(f"{at}.{key}[{j}]", f"unknown group {_one_line(repr(name))}")
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
    for key in ("command", "start", "stop", "check", "before_start", "after_stop"):
        _check_command(f"{at}.{key}", getattr(app, key), app.env)
    for name in app.env:
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{at}.env", f"invalid variable name {_one_line(repr(name))}")
    if app.workdir is not None and not app.workdir.startswith("/"):
        raise ConfigError(f"{at}.workdir", "must be an absolute path")
    if app.user is not None and not _USER.fullmatch(app.user):
        raise ConfigError(f"{at}.user", f"invalid user name {_one_line(repr(app.user))}")
    if app.user == "root":
        raise ConfigError(f"{at}.user", "leave 'user' out to run as the supervisor's user")


def _validate_fence(fence: Fence, at: str) -> None:
    """Option values are never quoted back: one of them is a password."""
    agent = fence.agent
    if agent.startswith("/"):
        if not agent.isprintable() or any(c.isspace() for c in agent) or "/../" in agent + "/":
            raise ConfigError(f"{at}.agent", "an absolute path without spaces or '..'")
    elif not _FENCE_AGENT.fullmatch(agent):
        raise ConfigError(
            f"{at}.agent",
            f"invalid agent {_one_line(repr(agent))}: a command name (fence_ipmilan) "
            "or an absolute path",
        )
    for key, value in fence.options.items():
        if not _FENCE_OPTION.fullmatch(key):
            raise ConfigError(
                f"{at}.options",
                f"invalid option name {_one_line(repr(key))} (A-Z a-z 0-9 _ -, no '=')",
            )
        if key == "action":
            raise ConfigError(f"{at}.options.action", "set by Vigil (off), not in the file")
        if any(c in value for c in "\n\r\0"):
            raise ConfigError(f"{at}.options.{key}", "must be one line (value not shown)")
    if not 0 < fence.timeout <= MAX_FENCE_TIMEOUT:
        raise ConfigError(f"{at}.timeout", f"must be over 0 and at most {MAX_FENCE_TIMEOUT:g}s")


def _validate_monitor(monitor: Monitor, at: str) -> None:
    given = [k for k in ("tcp", "http", "exec") if getattr(monitor, k) is not None]
    if len(given) != 1:
        raise ConfigError(at, "give exactly one of tcp, http, exec")
    if monitor.tcp is not None and not 0 < monitor.tcp < 65536:
        raise ConfigError(f"{at}.tcp", f"not a port: {monitor.tcp}")
    if monitor.http is not None and not monitor.http.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.http", f"not an http(s) URL: {_one_line(repr(monitor.http))}")
    _check_command(f"{at}.exec", monitor.exec)
    if monitor.failures < 1:
        raise ConfigError(f"{at}.failures", "must be 1 or more")


def encode(spec: ClusterSpec) -> bytes:
    return msgspec.json.encode(spec)


def decode(data: bytes) -> ClusterSpec:
    spec = msgspec.json.decode(data, type=ClusterSpec)
    validate(spec)
    return spec
