"""``plugin.toml``: a folder plugin's manifest, parsed and checked field by field."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from supervision import Backoff, Restart

from .._core._exceptions import ManifestError
from .._core._mailbox import MailboxConfig, Overflow
from .._core._ratelimit import RateLimit
from ._model import Concurrency, Isolation, PluginMetadata, ResourceLimits
from ._sandbox import LIMIT_KEYS, SANDBOX_KEYS, Sandbox, parse_sandbox


@attrs.frozen
class Manifest:
    """What a plugin declares about how to run it."""

    metadata: PluginMetadata
    entry: str
    """``module:Class``; the module lives in the plugin's folder (or is importable)."""
    restart: Restart = Restart.PERMANENT
    backoff: Backoff | None = None
    mailbox: MailboxConfig = attrs.field(factory=MailboxConfig)
    rate_limit: RateLimit | None = None
    probe_period: float = 10.0
    config: Mapping[str, Any] = attrs.field(factory=dict)


def load_manifest(path: Path) -> Manifest:
    """Read and check ``path``.

    Raises:
        ManifestError: unreadable, not TOML, or a field missing or wrong.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from None
    return parse_manifest(data, source=str(path))


_KNOWN: dict[str, frozenset[str] | None] = {
    "plugin": frozenset(
        {"name", "version", "description", "author", "api_version", "isolation",
         "permissions", "entry"}
    ),
    "limits": frozenset(LIMIT_KEYS),
    "supervision": frozenset({"restart", "backoff_initial", "backoff_max", "probe_period"}),
    "mailbox": frozenset({"capacity", "overflow"}),
    "rate_limit": frozenset({"rate", "burst"}),
    "concurrency": frozenset({"max", "groups"}),
    "sandbox": SANDBOX_KEYS,
    "config": None,  # the plugin's own settings: any keys
}  # fmt: skip
"""Every table and key a manifest may have. Anything else is refused, naming the closest
known one: a host that ignored a table it does not know would run the plugin other than
its author meant (one call at a time, say, for a plugin asking for ten)."""


def _check_known(data: Mapping[str, Any], source: str) -> None:
    for table, value in data.items():
        if table not in _KNOWN:
            raise ManifestError(f"{source}: {_unknown(f'[{table}]', table, _KNOWN)}")
        keys = _KNOWN[table]
        if keys is None or not isinstance(value, dict):
            continue  # a table that is not a table is reported by its reader
        for key in value:
            if key not in keys:
                raise ManifestError(f"{source}: {_unknown(f'{table}.{key}', key, keys)}")


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
    return f"unknown {what} ({hint}); this host does not know it, so it would be ignored"


def parse_manifest(data: Mapping[str, Any], *, source: str) -> Manifest:
    _check_known(data, source)
    reader = _Reader(data, source)
    plugin = reader.table("plugin", required=True)
    limits = reader.table("limits")
    supervision = reader.table("supervision")
    mailbox = reader.table("mailbox")
    rate = reader.table("rate_limit")
    concurrency = reader.table("concurrency")
    sandbox = reader.table("sandbox")
    # Limits may be stated in [limits] or [sandbox], not both ways at once.
    for key in LIMIT_KEYS:
        if key in sandbox and key in limits and sandbox[key] != limits[key]:
            raise ManifestError(
                f"{source}: limits.{key} = {limits[key]!r} and sandbox.{key} ="
                f" {sandbox[key]!r} disagree; state it once"
            )
    limits = {**limits, **{key: sandbox[key] for key in LIMIT_KEYS if key in sandbox}}
    try:
        metadata = PluginMetadata(
            name=reader.get(plugin, "plugin.name", str, required=True),
            version=reader.get(plugin, "plugin.version", str, required=True),
            description=reader.get(plugin, "plugin.description", str, default=""),
            author=reader.get(plugin, "plugin.author", str, default=""),
            api_version=reader.get(plugin, "plugin.api_version", str, required=True),
            isolation=reader.choice(plugin, "plugin.isolation", Isolation, "in_process"),
            permissions=tuple(reader.get(plugin, "plugin.permissions", list, default=[])),
            limits=ResourceLimits(
                memory_mb=reader.get(limits, "limits.memory_mb", int, default=None),
                cpu_seconds=reader.get(limits, "limits.cpu_seconds", int, default=None),
                open_files=reader.get(limits, "limits.open_files", int, default=None),
                cpu_percent=reader.get(limits, "limits.cpu_percent", int, default=None),
                disk_mb=reader.get(limits, "limits.disk_mb", int, default=None),
                processes=reader.get(limits, "limits.processes", int, default=None),
            ),
            sandbox=parse_sandbox(sandbox) if sandbox else Sandbox(declared="sandbox" in data),
            concurrency=Concurrency(
                max=reader.get(concurrency, "concurrency.max", int, default=1),
                groups=reader.get(concurrency, "concurrency.groups", dict, default={}),
            ),
        )
        initial = reader.get(supervision, "supervision.backoff_initial", float, default=None)
        maximum = reader.get(supervision, "supervision.backoff_max", float, default=None)
        return Manifest(
            metadata=metadata,
            entry=_entry(reader.get(plugin, "plugin.entry", str, required=True), source),
            restart=reader.choice(supervision, "supervision.restart", Restart, "permanent"),
            backoff=Backoff(initial, maximum or initial) if initial is not None else None,
            mailbox=MailboxConfig(
                reader.get(mailbox, "mailbox.capacity", int, default=1000),
                reader.choice(mailbox, "mailbox.overflow", Overflow, "reject"),
            ),
            rate_limit=(
                RateLimit(
                    reader.get(rate, "rate_limit.rate", float, required=True),
                    reader.get(rate, "rate_limit.burst", int, required=True),
                )
                if rate
                else None
            ),
            probe_period=reader.get(supervision, "supervision.probe_period", float, 10.0),
            config=reader.table("config"),
        )
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{source}: {exc}") from None


def _entry(value: str, source: str) -> str:
    module, _, attribute = value.partition(":")
    if not module or not attribute or not all(p.isidentifier() for p in module.split(".")):
        raise ManifestError(
            f"{source}: plugin.entry must be 'module:Class' (like 'analytics.plugin:Plugin'),"
            f" got {value!r}"
        )
    return value


@attrs.frozen
class _Reader:
    data: Mapping[str, Any]
    source: str

    def table(self, name: str, *, required: bool = False) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            if required:
                raise ManifestError(f"{self.source}: missing the [{name}] table")
            return {}
        if not isinstance(value, dict):
            raise ManifestError(f"{self.source}: [{name}] must be a table")
        return value

    def choice(self, table: Mapping[str, Any], dotted: str, kind: Any, default: str) -> Any:
        value = self.get(table, dotted, str, default)
        allowed = [member.value for member in kind]
        if value not in allowed:
            raise ManifestError(
                f"{self.source}: {dotted} must be one of {', '.join(allowed)}, got {value!r}"
            )
        return kind(value)

    def get(
        self,
        table: Mapping[str, Any],
        dotted: str,
        kind: type,
        default: Any = None,
        *,
        required: bool = False,
    ) -> Any:
        key = dotted.rpartition(".")[2]
        if key not in table:
            if required:
                raise ManifestError(f"{self.source}: missing {dotted}")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(
                f"{self.source}: {dotted} must be {kind.__name__}, got {type(value).__name__}"
            )
        return value
