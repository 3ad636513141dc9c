"""What a plugin asks of its sandbox (``[sandbox]`` in ``plugin.toml``), and the grants
an operator answers with.

A plugin's requests are strings, one per thing it asks for, so that grants can match
them and people can read them:

- ``filesystem:read:/etc/ssl``, ``filesystem:write:/var/tmp/x`` (beyond its own folder,
  readable, and its data folder, writable, which every plugin has without asking);
- ``network:loopback``, ``network:api.example.com:443``, ``network:*:5432``;
- ``exec:/usr/bin/git``;
- ``secrets:aws_key`` (read through ``ctx.secret("aws_key")``);
- ``apis:events:publish`` (a scope of the daemon's API, through ``ctx.api``).

A grant is a request string, a kind (``network`` grants every network request), or
``all``. Limits (memory, CPU, disk, processes...) are not requests: the plugin states
them and the host enforces them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

import attrs

_v = attrs.validators

KINDS = ("filesystem", "network", "exec", "secrets", "apis")
"""The kinds of request, each a grant of all its requests."""


class PathAccess(enum.Enum):
    READ = "read"
    WRITE = "write"
    """Write implies read."""


class NetworkMode(enum.Enum):
    NONE = "none"
    """No sockets but Unix ones to its own pipes: no TCP, no UDP, no raw sockets."""
    LOOPBACK = "loopback"
    """TCP to 127.0.0.1 and ::1 (any port but the daemon's own)."""
    LIST = "list"
    """TCP to the listed ``host:port`` (or any host for ``*:port`` / a bare port)."""


def _absolute(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"a sandbox path must be absolute, without '..', got {value!r}")
    return str(path)


@attrs.frozen
class PathRule:
    path: str = attrs.field(converter=_absolute)
    access: PathAccess = PathAccess.READ

    @property
    def request(self) -> str:
        return f"filesystem:{self.access.value}:{self.path}"


@attrs.frozen
class Endpoint:
    """A TCP destination: ``host`` None means any host (the kernel filters ports)."""

    host: str | None
    port: int = attrs.field(validator=[_v.instance_of(int), _v.ge(1), _v.le(65535)])

    @property
    def request(self) -> str:
        return f"network:{self.host or '*'}:{self.port}"

    @classmethod
    def parse(cls, value: object) -> Endpoint:
        """``443``, ``"443"``, ``"*:443"`` or ``"api.example.com:443"``."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(None, value)
        if isinstance(value, str):
            host, _, port = value.rpartition(":")
            if port.isdigit():
                return cls(None if host in ("", "*") else host.strip("[]"), int(port))
        raise ValueError(
            f"a network entry is a port or 'host:port' (like 443 or 'api.example.com:443'),"
            f" got {value!r}"
        )


def _tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(items)


@attrs.frozen
class Sandbox:
    """What a plugin asks of its sandbox. The default (no ``[sandbox]`` table) asks for
    nothing: its own folder readable, its data folder writable, no network, no programs,
    no secrets, no daemon API."""

    filesystem: tuple[PathRule, ...] = attrs.field(default=(), converter=_tuple)
    network: NetworkMode = NetworkMode.NONE
    endpoints: tuple[Endpoint, ...] = attrs.field(default=(), converter=_tuple)
    """With ``network = LIST``: where it may connect."""
    exec: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    """Absolute paths of the programs it may run; empty: none (no ``execve`` at all)."""
    secrets: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    apis: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    declared: bool = False
    """The manifest has a ``[sandbox]`` table (such a plugin never runs in process)."""

    def __attrs_post_init__(self) -> None:
        for program in self.exec:
            _absolute(program)
        if self.network is NetworkMode.LIST and not self.endpoints:
            raise ValueError('a network list needs at least one entry (or say "none")')
        for name in self.secrets:
            check_secret_name(name)

    def requests(self) -> tuple[str, ...]:
        """Every request, in a stable order (what an operator grants)."""
        found: list[str] = [rule.request for rule in self.filesystem]
        if self.network is NetworkMode.LOOPBACK:
            found.append("network:loopback")
        found += [endpoint.request for endpoint in self.endpoints]
        found += [f"exec:{program}" for program in self.exec]
        found += [f"secrets:{name}" for name in self.secrets]
        found += [f"apis:{scope}" for scope in self.apis]
        return tuple(dict.fromkeys(found))


def check_secret_name(name: object) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"a secret's name is letters, digits, '_', '-' and '.', got {name!r}")
    return name


def ungranted(requests: Iterable[str], grants: Iterable[str]) -> list[str]:
    """The requests that ``grants`` do not cover (in the order asked)."""
    granted = set(grants)
    if "all" in granted:
        return []
    return [r for r in requests if r not in granted and r.split(":", 1)[0] not in granted]


def parse_grants(text: str) -> tuple[str, ...]:
    """``--grant network,secrets:aws_key`` (comma separated).

    Raises:
        ValueError: an entry that is neither ``all``, a kind, nor a request of one.
    """
    grants = tuple(part.strip() for part in text.split(",") if part.strip())
    for grant in grants:
        if grant != "all" and grant.split(":", 1)[0] not in KINDS:
            raise ValueError(
                f"{grant!r} is not a grant: use all, a kind ({', '.join(KINDS)}) or a"
                " request such as secrets:aws_key"
            )
    return grants


SANDBOX_KEYS = frozenset(
    {"filesystem", "network", "exec", "secrets", "apis", "memory_mb", "cpu_percent",
     "cpu_seconds", "disk_mb", "open_files", "processes"}
)  # fmt: skip
LIMIT_KEYS = ("memory_mb", "cpu_percent", "cpu_seconds", "disk_mb", "open_files", "processes")


def parse_sandbox(table: Mapping[str, Any]) -> Sandbox:
    """``[sandbox]`` without its limits (the manifest reader puts those with
    ``[limits]``).

    Raises:
        ValueError: naming the key and what it expects.
    """
    rules = []
    for entry in _list(table, "filesystem"):
        if not isinstance(entry, dict) or set(entry) - {"path", "access"} or "path" not in entry:
            raise ValueError(
                'sandbox.filesystem entries are {path = "/abs/path", access = "read" |'
                f' "write"}}, got {entry!r}'
            )
        access = entry.get("access", "read")
        if access not in ("read", "write"):
            raise ValueError(f'sandbox.filesystem access is "read" or "write", got {access!r}')
        rules.append(PathRule(entry["path"], PathAccess(access)))
    network = table.get("network", "none")
    endpoints: list[Endpoint] = []
    if isinstance(network, list):
        endpoints = [Endpoint.parse(item) for item in network]
        mode = NetworkMode.LIST
    elif network in ("none", "loopback"):
        mode = NetworkMode(network)
    else:
        raise ValueError(
            'sandbox.network is "none", "loopback" or a list of ports and "host:port"'
            f" entries, got {network!r}"
        )
    programs = table.get("exec", False)
    if programs is False:
        programs = []
    elif not isinstance(programs, list) or not all(isinstance(p, str) for p in programs):
        raise ValueError(
            "sandbox.exec is false or a list of the absolute paths of the programs it runs,"
            f" got {programs!r}"
        )
    return Sandbox(
        filesystem=rules,
        network=mode,
        endpoints=endpoints,
        exec=programs,
        secrets=_strings(table, "secrets"),
        apis=_strings(table, "apis"),
        declared=True,
    )


def _list(table: Mapping[str, Any], key: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"sandbox.{key} must be a list, got {type(value).__name__}")
    return value


def _strings(table: Mapping[str, Any], key: str) -> list[str]:
    value = _list(table, key)
    if not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"sandbox.{key} must be a list of non-empty strings, got {value!r}")
    return value
