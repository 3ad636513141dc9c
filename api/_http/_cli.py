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
from ._requests import current_daemon, field, principal
from ._routes import Access, Body, Reply, Route, checked_body, route
from ._shapes import INTEGER, STRING, array, obj

blueprint = Blueprint("cli", __name__)

MAX_ARGS = 256
"""The most words one command line may have."""
_ARGV = array(STRING, minItems=1, maxItems=MAX_ARGS)


@route(blueprint, Route(
    "get", "/api/v1/cli/commands", "Every plugin CLI command's spec",
    (Reply(200, "The commands", obj(["commands"], commands=array(obj(
        ["plugin", "name", "full_name"], plugin=STRING, name=STRING, full_name=STRING,
    )))),),
))  # fmt: skip
async def cli_commands() -> Any:
    return {"commands": cli_specs()}


@route(blueprint, Route(
    "post", "/api/v1/cli/execute",
    "Run a plugin CLI command (the token must hold the command's permissions)",
    (Reply(200, "What the command printed, and its exit code",
           obj(["output", "exit_code"], output=STRING, exit_code=INTEGER)),),
    Access.TOKEN,
    body=Body({
        "type": "object",
        "properties": {"args": _ARGV, "argv": _ARGV},
        "anyOf": [{"required": ["args"]}, {"required": ["argv"]}],
        "description": f"an object whose 'args' (or 'argv') lists the command's words (1 to"
        f" {MAX_ARGS} strings), such as {{\"args\": [\"aws\", \"list\"]}}",
    }, examples=({"args": ["analytics", "status"]},)),
    problems=(403, 404, 409, 502, 503, 504),
))  # fmt: skip
async def cli_execute() -> Any:
    who = await principal()
    argv = field(checked_body(), "args", list, aliases=("argv",))
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
