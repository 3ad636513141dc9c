"""``/api/v1/cli``: the plugins' CLI commands (their specs, for ``cws`` to offer them)
and running one (any valid token may, if it holds the command's ``permissions``:
commands can change things)."""

from __future__ import annotations

import time
from typing import Any

import attrs
from quart import Blueprint

from cws_actors import Source

from .._auth import AuthError, Principal, require
from ._problems import HTTPProblem
from ._requests import current_daemon, field, json_body, principal

blueprint = Blueprint("cli", __name__)


@blueprint.get("/api/v1/cli/commands")
async def cli_commands() -> Any:
    return {"commands": cli_specs()}


@blueprint.post("/api/v1/cli/execute")
async def cli_execute() -> Any:
    who = await principal()  # the caller first: an anonymous body is refused before it is read
    body = await json_body()
    argv = field(body, "args", list, aliases=("argv",))
    if not argv or not all(isinstance(word, str) for word in argv):
        raise HTTPProblem(400, "Bad request", "'args' must be a non-empty list of strings")
    return await execute(argv, who)


def cli_specs() -> list[dict[str, Any]]:
    return [
        {
            "plugin": plugin,
            "name": spec.name,
            "parent": spec.parent,
            "full_name": spec.full_name,
            "usage": spec.usage,
            "short": spec.short,
            "long": spec.long,
            "aliases": list(spec.aliases),
            "flags": [attrs.asdict(flag) for flag in spec.flags],
            "protected": spec.protected,
            "permissions": list(spec.permissions),
        }
        for plugin, spec in current_daemon().host.cli_commands()
    ]


async def execute(argv: list[str], who: Principal) -> dict[str, Any]:
    """Run a plugin command for ``who`` (any valid token may: commands can change
    things), if it holds the command's ``permissions``."""
    daemon = current_daemon()
    found = daemon.host.find_command(argv)
    if found is not None:
        try:
            require(who, *found[1].permissions)
        except AuthError as exc:
            detail = f"{found[1].full_name} (plugin {found[0]!r}): {exc}"
            raise HTTPProblem(exc.status, "Forbidden", detail) from None
    began = time.perf_counter()
    result = await daemon.host.execute_cli(argv, source=Source.CLI)
    if found is not None:  # labelled by the plugin's registered name, never by argv[0]
        daemon.metrics.plugin_latency.labels(plugin=found[0], kind="cli").observe(
            time.perf_counter() - began
        )
    return {"output": result.output, "exit_code": result.exit_code}
