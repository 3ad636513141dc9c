"""``/api/v1/secrets``: the operator's secrets for plugins (``cws secret``). Every
route needs the scope ``admin``; no route ever returns a value: a secret goes to the
plugins granted it (``ctx.secret``), and nowhere else."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from ._problems import HTTPProblem
from ._requests import current_daemon, field, json_body, principal

blueprint = Blueprint("secrets", __name__)


@blueprint.get("/api/v1/secrets")
async def secrets() -> Any:
    await principal("admin")
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


@blueprint.put("/api/v1/secrets/<name>")
async def set_secret(name: str) -> Any:
    await principal("admin")
    value = field(await json_body(), "value", str)
    try:
        replaced = await current_daemon().host.secrets.set(name, value)
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None
    return {"name": name, "replaced": replaced}, 200 if replaced else 201


@blueprint.delete("/api/v1/secrets/<name>")
async def remove_secret(name: str) -> Any:
    await principal("admin")
    if not await current_daemon().host.secrets.remove(name):
        raise HTTPProblem(404, "Not found", f"no secret is named {name!r}; see GET /api/v1/secrets")
    return {"removed": name}
