"""``/api/v1/actors`` (the supervision tree, one actor, restart and clear-quarantine,
which need ``admin``) and ``/api/v1/dead-letters``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quart import Blueprint

from ._problems import HTTPProblem
from ._requests import current_daemon, guarded
from ._routes import Access, Reply, Route, path, query, query_value, route
from ._shapes import DEAD_LETTER, INTEGER, array, obj, ref
from ._views import actor_view, dead_letter_view

blueprint = Blueprint("actors", __name__)

MAX_DEAD_LETTERS = 10_000
"""The most dead letters one ``GET /api/v1/dead-letters`` asks for."""
_SEGMENT = "[A-Za-z0-9_][A-Za-z0-9_.-]*"
"""An actor's name (the runtime's rule)."""
_PATH = path(
    "path",
    "the actor's path without its leading '/' (plugins/aws)",
    {"type": "string", "pattern": f"^{_SEGMENT}(?:/{_SEGMENT})*$"},
    converter="path",
)
_ACTOR = Reply(200, "The actor (a supervisor with its children)", ref("Actor"))
_ERRORS = (404, 409, 503, 504)


@route(blueprint, Route("get", "/api/v1/actors", "The actor tree", (_ACTOR,)))
async def actors() -> Any:
    return actor_view(current_daemon().runtime.actors())


@route(blueprint, Route(
    "get", "/api/v1/actors/{path}", "One actor or subtree", (_ACTOR,),
    params=(_PATH,), problems=(404,),
))  # fmt: skip
async def actor(path: str) -> Any:
    try:
        return actor_view(current_daemon().runtime.actors().find("/" + path.strip("/")))
    except KeyError:
        raise HTTPProblem(404, "Not found", f"no actor at /{path}") from None


@route(blueprint, Route(
    "post", "/api/v1/actors/{path}/restart", "Restart an actor", (_ACTOR,),
    Access.TOKEN, ("admin",), params=(_PATH,), problems=_ERRORS,
))  # fmt: skip
async def restart(path: str) -> Any:
    return await _act_on(path, current_daemon().runtime.restart)


@route(blueprint, Route(
    "post", "/api/v1/actors/{path}/clear-quarantine", "Start a quarantined actor again",
    (_ACTOR,), Access.TOKEN, ("admin",), params=(_PATH,), problems=_ERRORS,
))  # fmt: skip
async def clear_quarantine(path: str) -> Any:
    return await _act_on(path, current_daemon().runtime.clear_quarantine)


async def _act_on(path: str, act: Callable[[str], Awaitable[None]]) -> Any:
    """``act`` (a runtime operation) on the actor at ``path``, then answer its view."""
    path = "/" + path.strip("/")
    await guarded(act(path))
    return actor_view(current_daemon().runtime.actors().find(path))


@route(blueprint, Route(
    "get", "/api/v1/dead-letters", "Recent dead letters, the latest last",
    (Reply(200, "The dead letters", obj(["dead_letters", "count"],
                                        dead_letters=array(DEAD_LETTER), count=INTEGER)),),
    params=(query("limit", {"type": "integer", "minimum": 0, "maximum": MAX_DEAD_LETTERS,
                            "default": 100}, "how many of the latest to answer"),),
))  # fmt: skip
async def dead_letters() -> Any:
    limit: int = query_value("limit")
    letters = current_daemon().runtime.dead_letters()[-limit:] if limit else []
    return {"dead_letters": [dead_letter_view(d) for d in letters], "count": len(letters)}
