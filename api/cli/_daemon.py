"""``cws daemon``: serve the daemon in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

from pathlib import Path

import asyncclick as click

from .._config import DEFAULT_PORT, ConfigError, DaemonConfig, config_file_to_read, load_config
from .._logging import daemon_logging
from ._common import options
from ._errors import CLIError


def _announce(url: str) -> None:
    # Alone on stdout, and flushed (click.echo flushes), so that scripts and service
    # managers can read the URL, which matters with --port 0.
    click.echo(url)


@click.command()
@click.option("--host", default=None, help="The address to listen on [default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help=f"The port [default {DEFAULT_PORT}]; 0 picks a free one.")  # fmt: skip
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The home folder [env CWS_HOME; default ~/.cws].")  # fmt: skip
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="A TOML file [default $CWS_HOME/cws.toml].")  # fmt: skip
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"],
              case_sensitive=False), default=None,
              help="The log's level (on stderr) [env CWS_LOG_LEVEL; default info].")  # fmt: skip
@click.option("--log-format", type=click.Choice(["text", "json"], case_sensitive=False),
              default=None, help="text, or a JSON object a line [default text]."
              )  # fmt: skip
@click.option("--access-log/--no-access-log", default=None,
              help="Log each HTTP request (hypercorn's access log) [default off].")  # fmt: skip
async def daemon(
    host: str | None,
    port: int | None,
    home: Path | None,
    config_file: Path | None,
    log_level: str | None,
    log_format: str | None,
    access_log: bool | None,
) -> None:
    """Run the daemon in the foreground; print the URL it serves.

    Settings come from the defaults, then $CWS_HOME/cws.toml (or --config FILE), then
    CWS_* variables, then these flags (`cws config show` shows them). SIGTERM or SIGINT
    stops it gracefully (exit code 0); SIGHUP reloads the configuration and rescans
    plugins.
    """
    # Not dumpable: no process of the same user reads the daemon's environment
    # (tokens, cloud credentials) or memory through /proc.
    from cws_actors import not_dumpable

    not_dumpable()
    # Imported here: hypercorn and the app are heavy, and only this command needs them.
    from .._home_lock import HomeInUse
    from .._serve import AddressInUse

    home = home if home is not None else options().home  # `cws --home H daemon` too
    config_path = config_file_to_read(config_file, home)
    try:
        config = load_config(
            config_path,
            host=host,
            port=port,
            home=home,
            log_level=log_level,
            log_format=log_format,
            access_log=access_log,
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from None  # exit 1, every problem listed, no traceback
    try:
        with daemon_logging(
            level=config.log_level,
            log_format=config.log_format.lower(),
            access_log=config.access_log,
        ):
            await _serve(config, config_path)
    except (HomeInUse, AddressInUse) as exc:  # raised before anything started
        raise CLIError(str(exc)) from None


async def _serve(config: DaemonConfig, config_path: Path | None) -> None:
    from .._serve import serve_daemon

    try:
        await serve_daemon(config, config_path=config_path, on_url=_announce)
    except* OSError as group:
        # Binding the socket (no permission, no such address) or creating the home.
        first = group.exceptions[0]
        reason = getattr(first, "strerror", None) or str(first)
        raise CLIError(
            f"cannot serve on {config.host}:{config.port} with home {config.home}: {reason}"
        ) from None
