"""The daemon's configuration: embedded defaults, then a TOML file, then ``CWS_*``
environment variables, then command-line flags (each later source wins).

```toml
[daemon]
host = "127.0.0.1"          # loopback unless you say otherwise
port = 8947
home = "~/.cws"             # state.db, plugins/, trusted_keys/ (or $CWS_HOME)
max_body_bytes = 1048576    # JSON bodies; archives may be up to max_upload_bytes
max_upload_bytes = 104857600
open_health = true          # /healthz, /readyz and /metrics without a token
shutdown_grace = 10.0       # seconds for requests in flight on SIGTERM
instance_poll_interval = 60 # seconds between cloud providers' state polls (0: never)
log_level = "INFO"          # DEBUG, INFO, WARNING or ERROR (on stderr)
log_format = "text"         # "text" or "json" (one JSON object a line)
access_log = false          # hypercorn's access log, one line a request

[plugins]
system_dir = "/usr/lib/cws/plugins"
require_signed = false
fork_server = true
entry_points = true
max_restarts = 10           # restarts of one plugin within restart_period before it is
restart_period = 60.0       #   quarantined (the others go on; cleared by hand)

[plugins.overrides.research-analytics]
config = { prices = { "t3.micro" = 0.0104 } }

[plugins.overrides.aws]       # the built-in cloud providers: see the README
config = { region = "us-east-1", endpoint_url = "http://127.0.0.1:5000" }
env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]

[events]
durable_topics = ["instance.*"]
```
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

DEFAULT_PORT = 8947


class ConfigError(ValueError):
    """The configuration file or an environment variable is unusable; the message names
    the file or variable, the field and what is expected."""


def default_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CWS_HOME") or "~/.cws").expanduser()


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, str) or value.upper() not in (c.upper() for c in choices):
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    return check


@attrs.frozen
class DaemonConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    home: Path = attrs.field(factory=default_home)
    max_body_bytes: int = 1024 * 1024
    max_upload_bytes: int = 100 * 1024 * 1024
    open_health: bool = True
    shutdown_grace: float = 10.0
    instance_poll_interval: float = 60.0
    """Seconds between cloud providers' state polls (0: never)."""
    system_dir: Path = Path("/usr/lib/cws/plugins")
    require_signed: bool = False
    fork_server: bool = True
    entry_points: bool = True
    max_restarts: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    """Restarts a plugin may have within ``restart_period`` before it is quarantined."""
    restart_period: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    overrides: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    durable_topics: tuple[str, ...] = ("instance.*",)
    log_level: str = attrs.field(default="INFO", validator=_one_of("log_level", _LOG_LEVELS))
    log_format: str = attrs.field(default="text", validator=_one_of("log_format", ("text", "json")))
    access_log: bool = False
    source: str = "embedded defaults"
    """Where this configuration came from, for the log and ``/api/v1/daemon``."""


# (table, key, field, type); the environment variable is CWS_<FIELD upper-cased>.
_FIELDS: list[tuple[str, str, str, type]] = [
    ("daemon", "host", "host", str),
    ("daemon", "port", "port", int),
    ("daemon", "home", "home", Path),
    ("daemon", "max_body_bytes", "max_body_bytes", int),
    ("daemon", "max_upload_bytes", "max_upload_bytes", int),
    ("daemon", "open_health", "open_health", bool),
    ("daemon", "shutdown_grace", "shutdown_grace", float),
    ("daemon", "instance_poll_interval", "instance_poll_interval", float),
    ("daemon", "log_level", "log_level", str),
    ("daemon", "log_format", "log_format", str),
    ("daemon", "access_log", "access_log", bool),
    ("plugins", "system_dir", "system_dir", Path),
    ("plugins", "require_signed", "require_signed", bool),
    ("plugins", "fork_server", "fork_server", bool),
    ("plugins", "entry_points", "entry_points", bool),
    ("plugins", "max_restarts", "max_restarts", int),
    ("plugins", "restart_period", "restart_period", float),
]


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> DaemonConfig:
    """Build the configuration. ``flags`` are command-line values (None: not given).

    Raises:
        ConfigError: naming the file or variable and the field.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources = ["embedded defaults"]
    if path is not None:
        values.update(_from_file(path))
        sources.append(str(path))
    for _, _, field, kind in _FIELDS:
        name = f"CWS_{field.upper()}"
        if name in env:
            values[field] = _convert(env[name], kind, name)
            sources.append(name)
    for field, value in flags.items():
        if value is not None:
            values[field] = value
    if "home" in values:
        values["home"] = Path(values["home"]).expanduser()
    elif "CWS_HOME" not in env:
        values["home"] = default_home(env)
    try:
        return DaemonConfig(**values, source=", ".join(dict.fromkeys(sources)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configuration: {exc}") from None


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {"daemon", "plugins", "events"}
    for table in data:
        if table not in known:
            raise ConfigError(
                f"{path}: unknown table [{table}]; expected {', '.join(sorted(known))}"
            )
    values: dict[str, Any] = {}
    for table, key, field, kind in _FIELDS:
        section = data.get(table, {})
        if key in section:
            values[field] = _typed(section[key], kind, f"{path}: {table}.{key}")
    fields = {key for table, key, _, _ in _FIELDS}
    for table in ("daemon", "plugins"):
        for key in data.get(table, {}):
            if key not in fields and not (table == "plugins" and key == "overrides"):
                raise ConfigError(f"{path}: unknown setting {table}.{key}")
    overrides = data.get("plugins", {}).get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ConfigError(f"{path}: [plugins.overrides.<name>] must be tables")
    for name, override in overrides.items():
        _check_override(override, f"{path}: [plugins.overrides.{name}]")
    values["overrides"] = overrides
    topics = data.get("events", {}).get("durable_topics")
    if topics is not None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise ConfigError(f"{path}: events.durable_topics must be a list of topic patterns")
        values["durable_topics"] = tuple(topics)
    return values


_OVERRIDE_KEYS = {
    "config": "a table of the plugin's settings",
    "isolation": '"in_process" or "subprocess"',
    "limits": "a table of resource limits (memory_mb, cpu_seconds...)",
    "env": "a list of environment variable names the plugin's process may see",
}


def _check_override(override: Mapping[str, Any], where: str) -> None:
    for key, value in override.items():
        if key not in _OVERRIDE_KEYS:
            expected = ", ".join(sorted(_OVERRIDE_KEYS))
            raise ConfigError(f"{where}: unknown key {key!r}; expected {expected}")
        ok = {
            "config": isinstance(value, dict),
            "isolation": value in ("in_process", "subprocess"),
            "limits": isinstance(value, dict),
            "env": isinstance(value, list) and all(isinstance(v, str) and v for v in value),
        }[key]
        if not ok:
            raise ConfigError(f"{where}: {key} must be {_OVERRIDE_KEYS[key]}, got {value!r}")


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value).expanduser()
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _convert(text: str, kind: type, name: str) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name} must be {kind.__name__}, got {text!r}") from None
