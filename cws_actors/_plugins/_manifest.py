"""``plugin.toml``: a folder plugin's manifest, parsed and checked field by field."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from supervision import Backoff, Restart

from .._core._exceptions import ManifestError
from .._core._mailbox import MailboxConfig, Overflow
from .._core._ratelimit import RateLimit
from ._model import Isolation, PluginMetadata, ResourceLimits


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


def parse_manifest(data: Mapping[str, Any], *, source: str) -> Manifest:
    reader = _Reader(data, source)
    plugin = reader.table("plugin", required=True)
    limits = reader.table("limits")
    supervision = reader.table("supervision")
    mailbox = reader.table("mailbox")
    rate = reader.table("rate_limit")
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
