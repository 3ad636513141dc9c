"""``/api/v1/secrets``: the operator's secrets for plugins (``cws secret``). Every
route needs the scope ``admin``; no route ever returns a value: a secret goes to the
plugins granted it (``ctx.secret``), and nowhere else."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from ._problems import HTTPProblem
from ._requests import current_daemon
from ._routes import Access, Body, Reply, Route, checked_body, path, route
from ._shapes import BOOLEAN, SECRETS, STRING, obj

blueprint = Blueprint("secrets", __name__)

ADMIN = ("admin",)
NAME = path(
    "name",
    "the secret's name: letters, digits, '_', '-' and '.' (another name is a 400 that says so)",
)
MAX_VALUE_CHARACTERS = 64 * 1024
"""A value is at most 64 KiB in UTF-8 (``MAX_SECRET_BYTES``): never more characters."""


@route(blueprint, Route(
    "get", "/api/v1/secrets", "The secrets' names and who asks for them (never their values)",
    (Reply(200, "The secrets' names", SECRETS),),
    Access.TOKEN, ADMIN,
))  # fmt: skip
async def secrets() -> Any:
    host = current_daemon().host
    names = await host.secrets.names()
    wanted: dict[str, list[str]] = {}
    for plugin in await host.discover():
        if plugin.manifest is not None:
            for name in plugin.manifest.metadata.sandbox.secrets:
                wanted.setdefault(name, []).append(plugin.name)
    listed = [{"name": name, "asked_for_by": wanted.get(name, [])} for name in names]
    missing = sorted(set(wanted) - set(names))
    return {"secrets": listed, "count": len(listed), "asked_for_but_not_set": missing}


_SET = obj(["name", "replaced"], name=STRING, replaced=BOOLEAN)


@route(blueprint, Route(
    "put", "/api/v1/secrets/{name}",
    "Set a secret for the plugins granted it (201 new, 200 replaced; the value is never"
    " returned)",
    (Reply(200, "Replaced", _SET), Reply(201, "Set", _SET)),
    Access.TOKEN, ADMIN,
    params=(NAME,),
    body=Body(
        obj(["value"], value={
            "type": "string", "minLength": 1, "maxLength": MAX_VALUE_CHARACTERS,
            "description": "the secret: a non-empty string of at most 65536 bytes in UTF-8",
        }),
        examples=({"value": "AKIA..."},),
    ),
))  # fmt: skip
async def set_secret(name: str) -> Any:
    value = checked_body()["value"]
    try:
        replaced = await current_daemon().host.secrets.set(name, value)
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None
    return {"name": name, "replaced": replaced}, 200 if replaced else 201


@route(blueprint, Route(
    "delete", "/api/v1/secrets/{name}", "Forget a secret",
    (Reply(200, "Forgotten", obj(["removed"], removed=STRING)),),
    Access.TOKEN, ADMIN,
    params=(NAME,),
    problems=(404,),
))  # fmt: skip
async def remove_secret(name: str) -> Any:
    if not await current_daemon().host.secrets.remove(name):
        raise HTTPProblem(404, "Not found", f"no secret is named {name!r}; see GET /api/v1/secrets")
    return {"removed": name}
