"""The daemon's configuration: embedded defaults, then a TOML file, then ``CWS_*``
environment variables, then command-line flags (each later source wins).

The file is ``$CWS_HOME/cws.toml`` (``~/.cws/cws.toml`` by default; ``--home`` names
another home) when it exists, or the one ``--config FILE`` names. Every setting, its
default and its meaning are in ``examples/cws.toml``, which the tests check against
:data:`SETTINGS` and :class:`DaemonConfig`. The environment variable of a setting is
``CWS_`` and its key upper-cased (``CWS_PORT``); the plugin overrides and the durable
topics are set in the file only.

:func:`resolve_config` also says where each value came from (``cws config show``), and
:func:`check_file` lists every problem of a file with its line (``cws config check``);
:func:`load_config` is what the daemon calls, and it raises :class:`ConfigError` with
those same problems.

(Over 500 lines, on purpose: the settings and the checks of the file that holds them
read best side by side; the file's messages are what ``cws config check`` prints.)
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._home import DEFAULT_PORT as DEFAULT_PORT
from ._home import default_home as default_home
from ._toml_lines import Key, key_lines, line_of

FILE_NAME = "cws.toml"
"""The configuration file's name in the home folder."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SPARE_MODES = ("after-restart", "always", "never")
"""``[plugins] warm_spares`` (the host's ``HostConfig.warm_spares``)."""
LOG_FORMATS = ("text", "json")


def home_config_file(home: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """``<home>/cws.toml``: the file the daemon reads when ``--config`` is not given
    (``home`` is ``--home``, else ``$CWS_HOME``, else ``~/.cws``)."""
    return (home.expanduser() if home is not None else default_home(env)) / FILE_NAME


def config_file_to_read(
    config_file: Path | None, home: Path | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """What ``cws daemon`` reads: ``--config FILE`` when given (it must exist), else
    ``<home>/cws.toml`` when it exists (see :func:`home_config_file`), else nothing."""
    if config_file is not None:
        return config_file
    candidate = home_config_file(home, env)
    try:
        return candidate if candidate.exists() else None
    except OSError:  # a home we may not look into: reading it will say why
        return candidate


@attrs.frozen
class Problem:
    """One thing wrong with the configuration: ``location`` is ``FILE:LINE`` (or the
    file alone), or None when ``text`` names an environment variable or a flag."""

    text: str
    location: str | None = None

    def __str__(self) -> str:
        return f"{self.location}: {self.text}" if self.location else self.text


class ConfigError(ValueError):
    """The configuration file, an environment variable or a flag is unusable; each of
    ``problems`` names the file and line (or the variable or flag), the key and what is
    expected."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = str(self.problems[0])
        else:
            listed = "\n".join(f"  {problem}" for problem in self.problems)
            message = f"{len(self.problems)} problems in the configuration:\n{listed}"
        super().__init__(message)


def _in(choices: Iterable[str]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    allowed = tuple(choices)

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {', '.join(allowed)}, got {value!r}")

    return check


@attrs.frozen
class Setting:
    """A scalar setting: ``[table] key``, the DaemonConfig field of the same name and
    the variable ``CWS_<KEY>``. ``rule`` checks the value (``expected`` says what it
    wants); ``normalize`` runs first. Declared once, on its field (:func:`_setting`)."""

    table: str
    key: str
    kind: type
    rule: Callable[[Any], bool] | None = None
    expected: str = ""
    normalize: Callable[[Any], Any] | None = None

    @property
    def dotted(self) -> str:
        return f"{self.table}.{self.key}"

    @property
    def env(self) -> str:
        return f"CWS_{self.key.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


_TABLE = "cws.table"
"""A field's metadata: its TOML table (every field in a table is a setting)."""
_SETTING = "cws.setting"
"""A field's metadata: ``(rule, expected, normalize)`` of a scalar setting."""
FOR_HOST = "cws.host"
"""A field's metadata: ``cws_actors.HostConfig`` has a field of the same name and
meaning, which takes this value (:func:`api._daemon.host_config`)."""


def _setting(
    table: str,
    default: Any = attrs.NOTHING,
    *,
    rule: Callable[[Any], bool] | None = None,
    expected: str = "",
    normalize: Callable[[Any], Any] | None = None,
    for_host: bool = False,
    **field: Any,
) -> Any:
    """A DaemonConfig field that is a scalar setting of ``[table]``: its type is the
    field's, its key the field's name, its variable ``CWS_<KEY>``, its flag ``--key``."""
    metadata = {_TABLE: table, _SETTING: (rule, expected, normalize), FOR_HOST: for_host}
    return attrs.field(default=default, metadata=metadata, **field)


def _table_only(table: str, *, for_host: bool = False, **field: Any) -> Any:
    """A DaemonConfig field set in the file's ``[table]`` only (no variable, no flag)."""
    return attrs.field(metadata={_TABLE: table, FOR_HOST: for_host}, **field)


def _not_empty(value: Any) -> bool:
    return bool(str(value).strip() if isinstance(value, str) else str(value))


@attrs.frozen
class DaemonConfig:
    """The daemon's settings; ``examples/cws.toml`` says what each one means.

    Each field declares its table, its check and whether the plugin host shares it;
    :data:`SETTINGS`, the file's tables, the variables and the flags follow from them.
    """

    host: str = _setting("daemon", "127.0.0.1", rule=_not_empty, expected="an address, not empty")
    port: int = _setting(
        "daemon", DEFAULT_PORT, rule=lambda v: 0 <= v <= 65535,
        expected="in 0..65535 (0: any free port)",
    )  # fmt: skip
    home: Path = _setting(  # noqa: RUF009 - _setting is an attrs.field
        "daemon", factory=default_home, rule=_not_empty, expected="a folder", for_host=True
    )
    max_body_bytes: int = _setting("daemon", 1024 * 1024, rule=lambda v: v >= 1, expected=">= 1")
    max_upload_bytes: int = _setting(
        "daemon", 100 * 1024 * 1024, rule=lambda v: v >= 1, expected=">= 1"
    )
    max_body_rate: int = _setting(
        "daemon", 64 * 1024 * 1024, rule=lambda v: v >= 0, expected=">= 0 (0: no bound)"
    )
    """Bytes of request bodies read a second, all connections together (a fair share in
    turn): a bulk body takes at most a bounded share of the event loop. 64 MiB/s: a 100
    MiB upload takes about 1.6 s. 0: as fast as clients send."""
    open_health: bool = _setting("daemon", True)
    loopback_is_one_source: bool = _setting(
        "daemon", True, validator=attrs.validators.instance_of(bool)
    )
    """The per-source rate limits of plugin endpoints count every loopback address
    (127.0.0.0/8, ::1) as one source; false keys them on the exact address."""
    open_reads: bool = _setting("daemon", False)
    """Answer reads (GET) without a token; health, readiness and metrics follow
    ``open_health`` instead, and the dashboard page always loads (it asks for a token)."""
    allowed_hosts: str = _setting("daemon", "", normalize=str.strip)
    """Host names, comma-separated, that requests may name in ``Host:`` besides the bound
    address, loopback addresses and ``localhost`` (the DNS-rebinding check)."""
    shutdown_grace: float = _setting("daemon", 10.0, rule=lambda v: v >= 0, expected=">= 0")
    keep_alive_seconds: float = _setting("daemon", 5.0, rule=lambda v: v > 0, expected="> 0")
    """Seconds an HTTP connection may stay open with no request before the daemon closes it."""
    max_connections: int = _setting(
        "daemon", 0, rule=lambda v: v >= 0,
        expected=">= 0 (0: the open-file limit less an eighth)",
    )  # fmt: skip
    """The most HTTP connections open at once; at the cap, the connection idle the longest
    is closed to accept the next. 0: the soft RLIMIT_NOFILE less an eighth (896 of 1,024)."""
    instance_poll_interval: float = _setting(
        "daemon", 60.0, rule=lambda v: v >= 0, expected=">= 0 (0: never)"
    )
    """Seconds between cloud providers' state polls (0: never)."""
    log_level: str = _setting(
        "daemon", "INFO", rule=LOG_LEVELS.__contains__,
        expected="one of DEBUG, INFO, WARNING, ERROR", normalize=str.upper,
        validator=_in(LOG_LEVELS),
    )  # fmt: skip
    log_format: str = _setting(
        "daemon", "text", rule=LOG_FORMATS.__contains__, expected="one of text, json",
        normalize=str.lower, validator=_in(LOG_FORMATS),
    )  # fmt: skip
    access_log: bool = _setting("daemon", False, validator=attrs.validators.instance_of(bool))
    system_dir: Path = _setting(  # noqa: RUF009 - _setting is an attrs.field
        "plugins", Path("/usr/lib/cws/plugins"), rule=_not_empty, expected="a folder",
        for_host=True,
    )  # fmt: skip
    require_signed: bool = _setting("plugins", False, for_host=True)
    fork_server: bool = _setting("plugins", True, for_host=True)
    warm_spares: str = _setting(
        "plugins", "after-restart", rule=SPARE_MODES.__contains__,
        expected="one of after-restart, always, never", normalize=str.lower, for_host=True,
        validator=_in(SPARE_MODES),
    )  # fmt: skip
    """Keep each forked subprocess plugin's next run ready (forked and confined, its
    module and preloads imported, a second after a run is up): a restart adopts it.
    ``after-restart``: once the plugin has restarted; ``always``; ``never``."""
    allow_weaker_sandbox: bool = _setting("plugins", False, for_host=True)
    """Run a subprocess plugin whose sandbox needs a control this machine cannot
    enforce (it is refused by default, naming the control)."""
    entry_points: bool = _setting("plugins", True, for_host=True)
    max_restarts: int = _setting(
        "plugins", 10, rule=lambda v: v >= 1, expected=">= 1", for_host=True,
        validator=attrs.validators.ge(1),
    )  # fmt: skip
    """Restarts a plugin may have within ``restart_period`` before it is quarantined."""
    restart_period: float = _setting(
        "plugins", 60.0, rule=lambda v: v > 0, expected="> 0", for_host=True,
        validator=attrs.validators.gt(0),
    )  # fmt: skip
    overrides: Mapping[str, Mapping[str, Any]] = _table_only("plugins", factory=dict, for_host=True)
    in_process_allowed: tuple[str, ...] = _table_only("plugins", default=(), for_host=True)
    """The folder plugins that may run in the daemon's process when they ask to."""
    default_grants: Mapping[str, tuple[str, ...]] = _table_only(
        "plugins", factory=dict, for_host=True
    )
    """What the operator grants plugins' sandboxes without being asked: by plugin name,
    ``"*"`` for every plugin (an array in the file grants every plugin)."""
    durable_topics: tuple[str, ...] = _table_only("events", default=("instance.*",))
    replay_buffer: int = _setting(
        "events", 1000, rule=lambda v: 0 <= v <= 100_000, expected="in 0..100000",
        validator=attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(100_000)),
    )  # fmt: skip
    """Non-durable events kept in memory for event-stream clients that reconnect with
    ``Last-Event-ID`` (durable ones are replayed from ``events.db``)."""
    open_events: bool = _setting("api", False, validator=attrs.validators.instance_of(bool))
    """Let loopback clients read ``/api/v1/events/stream`` without a token; otherwise it
    needs one with the scope ``events:read``."""
    snoozebot_body_auth: bool = _setting("api", False, validator=attrs.validators.instance_of(bool))
    """Accept Snoozebot's ``api_key`` body field as a token on ``POST /api/plugins/load``
    and ``/unload`` (off: the body of an anonymous request would have to be read)."""
    source: str = "embedded defaults"
    """Where this configuration came from, for the log and ``/api/v1/daemon``."""


def _settings() -> tuple[Setting, ...]:
    attrs.resolve_types(DaemonConfig)
    settings = []
    for field in attrs.fields(DaemonConfig):
        if _SETTING in field.metadata:
            assert isinstance(field.type, type), field  # resolved: str, int, float, bool, Path
            table, rule = field.metadata[_TABLE], field.metadata[_SETTING]
            settings.append(Setting(table, field.name, field.type, *rule))
    return tuple(settings)


SETTINGS: tuple[Setting, ...] = _settings()
"""Every scalar setting, from DaemonConfig's fields; ``[plugins.overrides.<name>]`` and
``[plugins] in_process_allowed`` and ``[events] durable_topics`` are the ones that are
not (set in the file only)."""

_BY_FIELD = {setting.key: setting for setting in SETTINGS}
_TABLES: dict[str, dict[str, str]] = {}
for _field in attrs.fields(DaemonConfig):
    if _TABLE in _field.metadata:
        _table = _field.metadata[_TABLE]
        _TABLES.setdefault(_table, {})[_field.name] = f"{_table}.{_field.name}"

_OVERRIDE_KEYS = {
    "config": "a table of the plugin's settings",
    "isolation": '"in_process" or "subprocess"',
    "limits": "a table of resource limits (memory_mb, cpu_seconds, open_files,"
    " cpu_percent, disk_mb, processes)",
    "env": "an array of the environment variables the plugin's process may see",
    "concurrency": "a table with max (calls at once) and groups (a table of group limits)",
    "sandbox": 'a table with network ("none", "loopback" or a list of ports and'
    ' "host:port"), filesystem (a list of {path, access}) and exec (false or a list)',
}
_LIMITS = {"memory_mb": 16, "cpu_seconds": 1, "open_files": 16, "cpu_percent": 1,
           "disk_mb": 1, "processes": 1}  # fmt: skip
"""``ResourceLimits``' fields and their least values."""
RESILIENCE_KEYS = frozenset(
    {"deadline", "retries", "backoff_initial", "backoff_max", "failure_threshold",
     "reset_timeout"}
)  # fmt: skip
"""``providers.Resilience``' fields (named here: importing providers costs seconds)."""
PROVIDER_CONFIG_KEYS: Mapping[str, frozenset[str]] = {
    "aws": frozenset({"region", "profile", "endpoint_url", "page_size", "connect_timeout",
                      "read_timeout", "wait_delay", "resilience"}),
    "gcp": frozenset({"project", "zones", "credentials_file", "api_endpoint", "anonymous",
                      "page_size", "poll_interval", "operation_timeout", "resilience"}),
}  # fmt: skip
"""The config keys of the built-in ``aws`` and ``gcp`` plugins: an unknown one (a typo
that would silently fall back to a default) is refused with the closest known key."""


@attrs.frozen
class Origin:
    """Where a value came from: ``kind`` is ``default``, ``file``, ``env`` or ``flag``;
    ``detail`` is ``embedded default``, ``FILE:LINE``, the variable or the flag."""

    kind: str
    detail: str


DEFAULT_ORIGIN = Origin("default", "embedded default")


@attrs.frozen
class ResolvedConfig:
    """A configuration and, by dotted key (``daemon.port``, ``plugins.overrides.aws``,
    ``events.durable_topics``), where each value came from."""

    config: DaemonConfig
    origins: Mapping[str, Origin]
    path: Path | None
    """The file read, if any."""

    def origin(self, key: str) -> Origin:
        return self.origins.get(key, DEFAULT_ORIGIN)


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> DaemonConfig:
    """Build the configuration from the defaults, the file at ``path`` (None: no file),
    ``env`` (default ``os.environ``) and ``flags``, the command-line values by field
    name (None: not given).

    Raises:
        ConfigError: listing every problem found, each naming its file and line, or its
            variable or flag.
    """
    return resolve_config(path, env=env, **flags).config


def resolve_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> ResolvedConfig:
    """Like :func:`load_config`, and say where each value came from."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    problems: list[Problem] = []
    sources = ["embedded defaults"]
    if path is not None:
        read = _read_file(path)
        values |= read.values
        origins |= read.origins
        problems += read.problems
        sources.append(str(path))
    for setting in SETTINGS:
        if setting.env in env:
            try:
                values[setting.key] = _from_text(setting, env[setting.env])
            except _Invalid as exc:
                problems.append(Problem(f"{setting.env} {exc}"))
            origins[setting.dotted] = Origin("env", setting.env)
            sources.append(setting.env)
    for field, value in flags.items():
        if value is None:
            continue
        if field not in _BY_FIELD:
            raise TypeError(f"load_config() got an unknown setting {field!r}")
        setting = _BY_FIELD[field]
        try:
            values[field] = _checked(setting, value)
        except _Invalid as exc:
            problems.append(Problem(f"{setting.flag} {exc}"))
        origins[setting.dotted] = Origin("flag", setting.flag)
    if problems:
        raise ConfigError(problems)
    if "home" not in values:
        values["home"] = default_home(env)
    try:
        config = DaemonConfig(**values, source=", ".join(dict.fromkeys(sources)))
    except (TypeError, ValueError) as exc:  # a rule of DaemonConfig not in SETTINGS
        raise ConfigError(f"configuration: {exc}") from None
    return ResolvedConfig(config, origins, path)


def check_file(path: Path) -> list[Problem]:
    """Every problem of the file at ``path`` (none: it is fine), in the file's order."""
    return _read_file(path).problems


# ---------------------------------------------------------------------- the file


class _Invalid(Exception):
    """A value is wrong; the text says what was expected and what came."""


@attrs.define
class _FileRead:
    path: Path
    lines: dict[Key, int] = attrs.field(factory=dict)
    values: dict[str, Any] = attrs.field(factory=dict)
    origins: dict[str, Origin] = attrs.field(factory=dict)
    problems: list[Problem] = attrs.field(factory=list)

    def at(self, *key: str) -> str:
        line = line_of(self.lines, key)
        return f"{self.path}:{line}" if line is not None else str(self.path)

    def problem(self, key: Key, text: str) -> None:
        self.problems.append(Problem(text, self.at(*key)))

    def unknown(self, key: Key, known: Iterable[str]) -> None:
        self.problem(key, _unknown_key(key, known))


def _read_file(path: Path) -> _FileRead:
    read = _FileRead(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        read.problems.append(Problem(f"cannot read it: {exc.strerror}", str(path)))
        return read
    except UnicodeDecodeError as exc:
        read.problems.append(Problem(f"not UTF-8 text: {exc.reason}", str(path)))
        return read
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        read.problems.append(Problem(f"not valid TOML: {exc}", where))
        return read
    read.lines = key_lines(text)
    for name, table in data.items():
        if name not in _TABLES and isinstance(table, dict):
            read.problem((name,), _unknown_table(name))
        elif name not in _TABLES:
            read.unknown((name,), [])
        elif not isinstance(table, dict):
            read.problem((name,), f"{name} must be a table ([{name}]), got {_describe(table)}")
        else:
            _read_table(read, name, table)
    read.problems.sort(key=_line_number)
    return read


def _read_table(read: _FileRead, name: str, table: dict[str, Any]) -> None:
    for key, value in table.items():
        setting = _BY_FIELD.get(key)
        if setting is not None and setting.table == name:
            try:
                read.values[key] = _checked(setting, value, setting.dotted)
                read.origins[setting.dotted] = Origin("file", read.at(name, key))
            except _Invalid as exc:
                read.problem((name, key), f"{setting.dotted} {exc}")
        elif (name, key) == ("plugins", "overrides"):
            _read_overrides(read, value)
        elif (name, key) == ("plugins", "in_process_allowed"):
            if not isinstance(value, list) or not all(
                isinstance(item, str) and item.strip() for item in value
            ):
                read.problem((name, key), "plugins.in_process_allowed must be an array of"
                             f" plugin names, got {_describe(value)}")  # fmt: skip
            else:
                read.values["in_process_allowed"] = tuple(value)
                read.origins["plugins.in_process_allowed"] = Origin("file", read.at(name, key))
        elif (name, key) == ("plugins", "default_grants"):
            _read_default_grants(read, value)
        elif (name, key) == ("events", "durable_topics"):
            bad = _bad_patterns(value)
            if bad:
                read.problem((name, key), "events.durable_topics must be an array of topic"
                             " patterns (dot-separated words, '*' for one word, '#' for any"
                             f" number), got {bad}")  # fmt: skip
            else:
                read.values["durable_topics"] = tuple(value)
                read.origins["events.durable_topics"] = Origin("file", read.at(name, key))
        else:
            read.unknown((name, key), _TABLES[name])


GRANT_KINDS = ("filesystem", "network", "exec", "secrets", "apis")
"""``cws_actors``' kinds of sandbox request (named here: this module imports no
``cws_actors``, so that ``cws config`` starts fast; a test keeps the two equal)."""


def _bad_grant(value: Any) -> bool:
    if not isinstance(value, str) or not value.strip() or "," in value:
        return True
    return value != "all" and value.split(":", 1)[0] not in GRANT_KINDS


def _read_default_grants(read: _FileRead, value: Any) -> None:
    """An array (every plugin), or a table of arrays by plugin name (``"*"``: every)."""
    where = ("plugins", "default_grants")
    expected = (
        "an array of grants (all, a kind such as network, or a request such as"
        ' secrets:aws_key) or a table of such arrays by plugin name ("*": every plugin)'
    )
    table = {"*": value} if isinstance(value, list) else value
    if not isinstance(table, dict):
        read.problem(where, f"plugins.default_grants must be {expected}, got {_describe(value)}")
        return
    good: dict[str, tuple[str, ...]] = {}
    for plugin, grants in table.items():
        key = where if isinstance(value, list) else (*where, plugin)
        bad = [g for g in grants if _bad_grant(g)] if isinstance(grants, list) else [grants]
        if bad:
            read.problem(key, f"{dotted_key(key)} must be {expected}; {_describe(bad[0])} is"
                         f" not a grant (kinds: {', '.join(GRANT_KINDS)})")  # fmt: skip
            continue
        good[plugin] = tuple(grants)
    read.values["default_grants"] = good
    read.origins["plugins.default_grants"] = Origin("file", read.at(*where))


def _read_overrides(read: _FileRead, overrides: Any) -> None:
    where = ("plugins", "overrides")
    if not isinstance(overrides, dict):
        read.problem(where, "plugins.overrides must be tables [plugins.overrides.<name>],"
                     f" got {_describe(overrides)}")  # fmt: skip
        return
    good: dict[str, Any] = {}
    for name, override in overrides.items():
        key = (*where, name)
        before = len(read.problems)
        if not isinstance(override, dict):
            read.problem(key, f"[plugins.overrides.{name}] must be a table, got"
                         f" {_describe(override)}")  # fmt: skip
            continue
        for field, value in override.items():
            _check_override(read, name, field, value)
        if len(read.problems) == before:
            good[name] = override
            read.origins[f"plugins.overrides.{name}"] = Origin("file", read.at(*key))
    read.values["overrides"] = good


def _check_override(read: _FileRead, name: str, field: str, value: Any) -> None:
    key = ("plugins", "overrides", name, field)
    dotted = dotted_key(key)
    if field not in _OVERRIDE_KEYS:
        read.unknown(key, _OVERRIDE_KEYS)
        return
    wrong = {
        "isolation": value not in ("in_process", "subprocess"),
        "env": not (_strings(value) and all(value)),
        "config": not isinstance(value, dict),
        "limits": not isinstance(value, dict),
        "concurrency": not isinstance(value, dict),
        "sandbox": not isinstance(value, dict)
        or bool(set(value) - {"network", "filesystem", "exec"}),
    }[field]
    if not wrong and field == "sandbox":
        from cws_actors import parse_sandbox

        try:
            parse_sandbox(value)
        except ValueError as exc:
            read.problem(key, f"{dotted}: {exc}")
            return
    if wrong:
        read.problem(key, f"{dotted} must be {_OVERRIDE_KEYS[field]}, got {_describe(value)}")
    elif field == "limits":
        for limit, number in value.items():
            if limit not in _LIMITS:
                read.unknown((*key, limit), _LIMITS)
            elif not (_is_int(number) and number >= _LIMITS[limit]):
                read.problem((*key, limit), f"{dotted}.{limit} must be an integer >="
                             f" {_LIMITS[limit]}, got {_describe(number)}")  # fmt: skip
    elif field == "concurrency":
        for part, setting in value.items():
            if part not in ("max", "groups"):
                read.unknown((*key, part), ("max", "groups"))
            elif part == "max" and not (_is_int(setting) and setting >= 1):
                read.problem((*key, part), f"{dotted}.max must be an integer >= 1, got"
                             f" {_describe(setting)}")  # fmt: skip
            elif part == "groups" and not (
                isinstance(setting, dict)
                and all(g.isidentifier() and _is_int(n) and n >= 1 for g, n in setting.items())
            ):
                read.problem((*key, part), f"{dotted}.groups must map group names to"
                             f" integers >= 1, got {_describe(setting)}")  # fmt: skip
    elif field == "config" and name in PROVIDER_CONFIG_KEYS:
        for option, option_value in value.items():
            if option not in PROVIDER_CONFIG_KEYS[name]:
                read.unknown((*key, option), PROVIDER_CONFIG_KEYS[name])
            elif option == "resilience" and isinstance(option_value, dict):
                for part in option_value:
                    if part not in RESILIENCE_KEYS:
                        read.unknown((*key, option, part), RESILIENCE_KEYS)


# ---------------------------------------------------------------------- values

_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          Path: "a path (a string)"}  # fmt: skip


def _checked(setting: Setting, value: Any, name: str = "") -> Any:
    """``value`` from the file or a flag, converted to the setting's type and checked."""
    kind = setting.kind
    if kind is Path and isinstance(value, str | Path):
        value = Path(value).expanduser()
    elif kind is float and _is_int(value):
        value = float(value)
    elif not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _Invalid(f"must be {_KINDS[kind]}, got {_describe(value)}")
    return _ruled(setting, value)


def _from_text(setting: Setting, text: str) -> Any:
    """An environment variable's text, converted to the setting's type and checked."""
    kind = setting.kind
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise _Invalid(f"must be true or false (or 1/0, yes/no, on/off), got {text!r}")
        return lowered in ("1", "true", "yes", "on")
    try:
        value = kind(text)
    except ValueError:
        raise _Invalid(f"must be {_KINDS[kind]}, got {text!r}") from None
    return _ruled(setting, Path(value).expanduser() if kind is Path else value)


def _ruled(setting: Setting, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {value}")
    if setting.normalize is not None:
        value = setting.normalize(value)
    if setting.rule is not None and not setting.rule(value):
        raise _Invalid(f"must be {setting.expected}, got {_show(value)}")
    return value


def _bad_patterns(value: Any) -> str:
    """What is wrong with ``value`` as topic patterns (the bus's rule), else ``""``."""
    if not isinstance(value, list):
        return _describe(value)
    for pattern in value:
        if not isinstance(pattern, str):
            return f"{_describe(pattern)} in the array"
        if not all(part in ("*", "#") or _BARE_KEY.fullmatch(part) for part in pattern.split(".")):
            return _show(pattern)
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _show(value: Any) -> str:
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    return repr(value)


def _describe(value: Any) -> str:
    """A TOML value's type, and the value when it is short: ``a string "80"``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"{'an integer' if isinstance(value, int) else 'a float'} ({value})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date or time ({value})"


def dotted_key(key: Key) -> str:
    """A key as TOML writes it: ``("a", "t3.micro")`` is ``a."t3.micro"``."""
    return ".".join(part if _BARE_KEY.fullmatch(part) else _show(part) for part in key)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _unknown_key(key: Key, known: Iterable[str]) -> str:
    """``unknown key daemon.prot; did you mean daemon.port?``: the closest key of the
    same table, else the closest key of any table."""
    dotted = dotted_key(key)
    known = sorted(known)
    parent = dotted_key(key[:-1])
    close = difflib.get_close_matches(key[-1], known, n=1)
    if close:
        suggestion = f"{parent}.{close[0]}" if parent else close[0]
        return f"unknown key {dotted}; did you mean {suggestion}?"
    if len(key) <= 2:
        everywhere = {k: f"{t}.{k}" for t, keys in _TABLES.items() for k in keys}
        close = difflib.get_close_matches(key[-1], sorted(everywhere), n=1)
        if close:
            return f"unknown key {dotted}; did you mean {everywhere[close[0]]}?"
    if not known:
        return f"unknown key {dotted}; settings go in {', '.join(f'[{t}]' for t in _TABLES)}"
    return f"unknown key {dotted}; expected one of {', '.join(known)}"


def _unknown_table(name: str) -> str:
    close = difflib.get_close_matches(name, list(_TABLES), n=1)
    if close:
        return f"unknown table [{name}]; did you mean [{close[0]}]?"
    return f"unknown table [{name}]; expected {', '.join(f'[{t}]' for t in _TABLES)}"


def _line_number(problem: Problem) -> int:
    _, _, line = (problem.location or "").rpartition(":")
    return int(line) if line.isdigit() else 0
