"""What the ``cws`` commands share: where to connect, common options and output helpers."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncclick as click
import attrs

from .._home import default_home

if TYPE_CHECKING:  # httpx is imported by the commands that talk to the daemon
    from ._client import Connection, DaemonClient

F = TypeVar("F", bound=Callable[..., Any])


@attrs.define
class Options:
    """``--url``, ``--token`` and ``--home`` as given (None: not given), on ``ctx.obj``.

    Given to ``cws`` itself, they hold for every command; given to a command, they win.
    """

    url: str | None = None
    token: str | None = None
    home: Path | None = None

    def connection(self) -> Connection:
        from ._client import resolve_connection

        return resolve_connection(url=self.url, token=self.token, home=self.home)

    def home_folder(self) -> Path:
        return self.home.expanduser() if self.home is not None else default_home()


def options() -> Options:
    return click.get_current_context().ensure_object(Options)


def _override(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(Options), field, value)

    return callback


URL_HELP = "The daemon's URL [env CWS_URL; default http://127.0.0.1:8947]."
TOKEN_HELP = "The API token [env CWS_TOKEN; else the file $CWS_HOME/token]."
HOME_HELP = "The daemon's home folder [env CWS_HOME; default ~/.cws]."


def remote_options(command: F) -> F:
    """``--url`` and ``--token`` on a command that talks to the daemon."""
    for name, text in (("token", TOKEN_HELP), ("url", URL_HELP)):
        command = click.option(
            f"--{name}",
            metavar=name.upper(),
            default=None,
            expose_value=False,
            callback=_override(name),
            help=text,
        )(command)
    return command


def home_option(command: F) -> F:
    """``--home`` on a command that opens the home folder itself."""
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        expose_value=False,
        callback=_override("home"),
        help=HOME_HELP,
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(command)


@contextlib.asynccontextmanager
async def connect() -> AsyncIterator[DaemonClient]:
    """A client of the daemon this invocation talks to."""
    from ._client import open_client

    async with open_client(options().connection()) as client:
        yield client


# ---------------------------------------------------------------------- output


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def on_terminal(stream: Any = None) -> bool:
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    colours: Mapping[int, Callable[[str], str | None]] | None = None,
) -> str:
    """Columns padded to their widest cell; the header is bold, and column ``i`` takes
    the colour ``colours[i](cell)`` (both only on a terminal)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    colours = colours or {}

    def line(cells: Sequence[str]) -> str:
        padded = [
            click.style(cell.ljust(width), fg=colours[i](cell))
            if i in colours
            else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    header = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    return "\n".join([click.style(header, bold=True), *(line(row) for row in rows)])


STATE_COLOURS = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "backoff": "yellow",
    "not_loaded": "white",
    "stopped": "white",
    "refused": "red",
    "failed": "red",
    "quarantined": "red",
}


def state_colour(state: str) -> str | None:
    """The colour of an actor's or a plugin's state (click drops it off a terminal)."""
    return STATE_COLOURS.get(state.split()[0] if state.strip() else state)


def when(timestamp: float | None, *, never: str = "-") -> str:
    if timestamp is None:
        return never
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
