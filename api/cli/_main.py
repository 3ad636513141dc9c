"""The ``cws`` command line (asyncclick, always on the trio backend).

``cws daemon`` runs the daemon; ``cws token`` manages API tokens in the home folder's
state database directly; the other commands talk to a running daemon over HTTP
(:mod:`api.cli._remote`), and any other word is looked up among the plugins' commands
(:mod:`api.cli._plugins`). Exit codes: 0 ok, 1 error, 2 usage, 3 daemon unreachable,
4 not authorized (:mod:`api.cli._errors`).

The built-in commands are imported when they are used (``_COMMANDS``), so that
``cws --version`` or ``cws plugin list`` does not pay for the daemon's imports.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import asyncclick as click

from ._common import HOME_HELP, TOKEN_HELP, URL_HELP, Options
from ._plugins import CwsGroup

_COMMANDS = {
    "actors": "api.cli._remote:actors",
    "chaos": "api.cli._faults:chaos",
    "config": "api.cli._config:config_group",
    "daemon": "api.cli._daemon:daemon",
    "dead-letters": "api.cli._remote:dead_letters",
    "demo": "api.cli._demo:demo",
    "events": "api.cli._remote:events",
    "faults": "api.cli._faults:faults",
    "instances": "api.cli._instances:instances",
    "plugin": "api.cli._remote:plugin",
    "secret": "api.cli._secrets:secret_group",
    "token": "api.cli._tokens:token_group",
}
"""Built-in command -> ``module:attribute``, imported on first use."""


class LazyGroup(CwsGroup):
    """The root group: built-in commands from ``_COMMANDS``, imported when named."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS and cmd_name not in self.commands:
            module, _, attribute = _COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(_COMMANDS))


@click.group(cls=LazyGroup)
@click.version_option(package_name="cws-actors", prog_name="cws")
@click.option("--url", metavar="URL", default=None, help=URL_HELP)
@click.option("--token", metavar="TOKEN", default=None, help=TOKEN_HELP)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=HOME_HELP)  # fmt: skip
@click.pass_context
async def cli(ctx: click.Context, url: str | None, token: str | None, home: Path | None) -> None:
    """cws-actors: a Trio actor-model supervision runtime.

    Exit codes: 0 ok, 1 error, 2 usage error, 3 daemon unreachable, 4 not authorized.
    """
    ctx.obj = Options(url=url, token=token, home=home)


def main() -> None:
    """Console-script entry point: run the CLI on Trio (asyncclick defaults to asyncio)."""
    try:
        cli(_anyio_backend="trio")
    except KeyboardInterrupt:
        raise SystemExit(130) from None
