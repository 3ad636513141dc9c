"""``cws config path|show|check``: find, show and check the daemon's configuration
without starting it (local: no daemon needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import asyncclick as click

from .._config import (
    LOG_FORMATS,
    LOG_LEVELS,
    SETTINGS,
    ConfigError,
    ResolvedConfig,
    check_file,
    config_file_to_read,
    dotted_key,
    home_config_file,
    resolve_config,
)
from ._common import home_option, options
from ._errors import CLIError


def _config_option(command: Any) -> Any:
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
        default=None, help="This file instead of $CWS_HOME/cws.toml.",
    )(command)  # fmt: skip


@click.group("config")
def config_group() -> None:
    """The daemon's configuration file: where it is, what is in effect, what is wrong.

    Settings come from the embedded defaults, then $CWS_HOME/cws.toml (or --config
    FILE), then CWS_* variables, then the daemon's flags. examples/cws.toml lists every
    setting with its default and meaning.
    """


@config_group.command("path")
@_config_option
@home_option
async def path_command(config_file: Path | None) -> None:
    """Print the file the daemon would read, and whether it exists."""
    path = config_file if config_file is not None else home_config_file(options().home)
    click.echo(path)
    if path.is_file():
        click.echo("it exists: the daemon reads it", err=True)
    elif config_file is not None:
        click.echo("it does not exist: the daemon would refuse to start", err=True)
    else:
        click.echo("it does not exist: the embedded defaults apply", err=True)


@config_group.command("show")
@_config_option
@home_option
@click.option("--host", default=None, help="As `cws daemon --host`.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="As `cws daemon --port`.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="As `cws daemon --log-level`.")  # fmt: skip
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False), default=None,
              help="As `cws daemon --log-format`.")  # fmt: skip
@click.option("--access-log/--no-access-log", default=None, help="As `cws daemon --access-log`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
async def show_command(config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Print the configuration the daemon would run with, and where each value comes
    from: the embedded default, FILE:LINE, a CWS_* variable or a flag.

    Given the daemon's flags, it shows their effect too. The text is TOML.
    """
    home = options().home
    path = config_file_to_read(config_file, home)
    try:
        resolved = resolve_config(path, home=home, **flags)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(_as_json(resolved, config_file), indent=2))
    else:
        click.echo(_as_toml(resolved, config_file))


@config_group.command("check")
@_config_option
@home_option
async def check_command(config_file: Path | None) -> None:
    """Check the file: each bad key or value with its line; exit 0 when it is fine,
    else 1 with every problem listed."""
    path = config_file if config_file is not None else home_config_file(options().home)
    if config_file is None and not path.exists():
        click.echo(f"{path}: no such file; the embedded defaults apply")
        return
    problems = check_file(path)
    if problems:
        for problem in problems:
            click.echo(str(problem))
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise CLIError(f"{path}: {count}; the daemon refuses to start with it")
    click.echo(f"{path}: ok")


# ---------------------------------------------------------------------- output


def _entries(resolved: ResolvedConfig) -> list[tuple[str, Any]]:
    """(dotted key, value) of every setting, in the order of examples/cws.toml."""
    config = resolved.config
    entries = [(setting.dotted, getattr(config, setting.key)) for setting in SETTINGS]
    # Each table once (TOML refuses a table declared twice): in_process_allowed and the
    # overrides after the last [plugins] setting, durable_topics first in [events].
    plugins = 1 + max(i for i, (key, _) in enumerate(entries) if key.startswith("plugins."))
    entries[plugins:plugins] = [
        ("plugins.in_process_allowed", list(config.in_process_allowed)),
        *[
            (f"plugins.overrides.{dotted_key((name,))}", dict(override))
            for name, override in config.overrides.items()
        ],
    ]
    events = next(
        (i for i, (key, _) in enumerate(entries) if key.startswith("events.")), len(entries)
    )
    entries.insert(events, ("events.durable_topics", list(config.durable_topics)))
    return entries


def _file(resolved: ResolvedConfig, config_file: Path | None) -> dict[str, Any]:
    path = resolved.path or config_file or home_config_file(options().home)
    return {"path": str(path), "read": resolved.path is not None}


def _as_json(resolved: ResolvedConfig, config_file: Path | None) -> dict[str, Any]:
    settings = {}
    for key, value in _entries(resolved):
        origin = resolved.origin(key)
        plain = str(value) if isinstance(value, Path) else value
        settings[key] = {"value": plain, "source": origin.kind, "origin": origin.detail}
    return {"file": _file(resolved, config_file), "settings": settings}


def _as_toml(resolved: ResolvedConfig, config_file: Path | None) -> str:
    file = _file(resolved, config_file)
    state = "read" if file["read"] else "not there, not read"
    lines = [
        "# The daemon's configuration: embedded defaults < file < CWS_* < flags.",
        f"# file: {file['path']} ({state})",
    ]
    table = ""
    for key, value in _entries(resolved):
        origin = resolved.origin(key).detail
        if key.startswith("plugins.overrides."):
            lines += ["", f"[{key}]  # {origin}"]
            table = key
            lines += [f"{dotted_key((name,))} = {_toml(part)}" for name, part in value.items()]
            continue
        section, _, name = key.rpartition(".")
        if section != table:
            lines += ["", f"[{section}]"]
            table = section
        lines.append(f"{name} = {_toml(value)}".ljust(40) + f"  # {origin}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    """A value as TOML writes it (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = ", ".join(f"{dotted_key((str(k),))} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return json.dumps(str(value))  # a date or time, which no setting takes
