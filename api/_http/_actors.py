"""``/api/v1/actors`` (the supervision tree, one actor, restart and clear-quarantine,
which need ``admin``) and ``/api/v1/dead-letters``."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from ._problems import HTTPProblem
from ._requests import current_daemon, guarded, principal
from ._views import actor_view, dead_letter_view

blueprint = Blueprint("actors", __name__)


@blueprint.get("/api/v1/actors")
async def actors() -> Any:
    return actor_view(current_daemon().runtime.actors())


@blueprint.get("/api/v1/actors/<path:path>")
async def actor(path: str) -> Any:
    try:
        return actor_view(current_daemon().runtime.actors().find("/" + path.strip("/")))
    except KeyError:
        raise HTTPProblem(404, "Not found", f"no actor at /{path}") from None


@blueprint.post("/api/v1/actors/<path:path>/restart")
async def restart(path: str) -> Any:
    await principal("admin")
    runtime = current_daemon().runtime
    await guarded(runtime.restart("/" + path.strip("/")))
    return actor_view(runtime.actors().find("/" + path.strip("/")))


@blueprint.post("/api/v1/actors/<path:path>/clear-quarantine")
async def clear_quarantine(path: str) -> Any:
    await principal("admin")
    runtime = current_daemon().runtime
    await guarded(runtime.clear_quarantine("/" + path.strip("/")))
    return actor_view(runtime.actors().find("/" + path.strip("/")))


@blueprint.get("/api/v1/dead-letters")
async def dead_letters() -> Any:
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise HTTPProblem(400, "Bad request", "limit must be an integer") from None
    letters = current_daemon().runtime.dead_letters()[-max(0, limit) :] if limit else []
    return {"dead_letters": [dead_letter_view(d) for d in letters], "count": len(letters)}
