"""Snoozebot's routes (``/api/plugins``), with its JSON shapes, so that its clients keep
working: list, discover, one plugin, load (with a timeout and retries) and unload."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint

from cws_actors import ActorError, PluginError, PluginNotFound, PluginRefused
from supervision import Backoff, Jitter

from ._plugins import PLUGIN_NAME, discovery
from ._problems import HTTPProblem, from_error
from ._requests import current_daemon, field, guarded, json_body, principal
from ._routes import OBJECT, Access, Body, Reply, Route, path, route

blueprint = Blueprint("snoozebot", __name__)

MAX_LOAD_RETRIES = 10
"""Retries ``POST /api/plugins/load`` allows (with backoff up to 2 s between them)."""
_RETRY_BACKOFF = Backoff(0.1, 2.0, jitter=Jitter.NONE)
"""Between load attempts: 0.2 s, 0.4 s... up to 2 s (the supervisor's backoff, no jitter)."""

# The routes' declarations (``_routes``): the document's operations and the checks made
# before each handler runs. The answers are documented as objects until their shapes
# follow Snoozebot's own handlers.
_PLUGIN_NAME = {
    "anyOf": [{"required": ["plugin_name"]}, {"required": ["plugin"]}],
    "description": "an object naming the plugin in 'plugin_name' (or 'plugin')",
}
_ERRORS = (404, 409, 429, 502, 503, 504)
SNOOZEBOT_LIST = Route(
    "get", "/api/plugins", "Snoozebot: loaded plugins", (Reply(200, "The plugins", OBJECT),)
)
SNOOZEBOT_DISCOVER = Route(
    "get", "/api/plugins/discover", "Snoozebot: discovered plugins",
    (Reply(200, "The plugins found", OBJECT),),
)  # fmt: skip
SNOOZEBOT_PLUGIN = Route(
    "get", "/api/plugins/{name}", "Snoozebot: one plugin", (Reply(200, "The plugin", OBJECT),),
    params=(path("name", "the plugin's name", PLUGIN_NAME),), problems=(404,),
)  # fmt: skip
SNOOZEBOT_LOAD = Route(
    "post", "/api/plugins/load", "Snoozebot: load a plugin (with a timeout and retries)",
    (Reply(200, "Loaded", OBJECT),),
    Access.TOKEN, ("plugins:manage",),
    body=Body({
        "type": "object",
        "properties": {
            "plugin_name": {"type": "string"},
            "plugin": {"type": "string"},
            "timeout_seconds": {"type": "number", "minimum": 1, "maximum": 3600,
                                "description": "seconds for each try, from 1 to 3600"},
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_LOAD_RETRIES,
                        "description": f"tries after the first, 0 to {MAX_LOAD_RETRIES}"},
        },
    } | _PLUGIN_NAME),
    problems=_ERRORS,
)  # fmt: skip
SNOOZEBOT_UNLOAD = Route(
    "post", "/api/plugins/unload", "Snoozebot: unload a plugin",
    (Reply(200, "Unloaded", OBJECT),),
    Access.TOKEN, ("plugins:manage",),
    body=Body({
        "type": "object",
        "properties": {
            "plugin_name": {"type": "string"},
            "plugin": {"type": "string"},
            "force": {"type": "boolean"},
        },
    } | _PLUGIN_NAME),
    problems=_ERRORS,
)  # fmt: skip


@route(blueprint, SNOOZEBOT_LIST)
async def snoozebot_list() -> Any:
    statuses = [s for s in await current_daemon().host.statuses() if s.loaded]
    return {
        "plugins": [
            {"name": s.name, "provider": s.name, "version": s.version, "status": s.state}
            for s in statuses
        ],
        "count": len(statuses),
    }


@route(blueprint, SNOOZEBOT_DISCOVER)
async def snoozebot_discover() -> Any:
    return await discovery(current_daemon())


@route(blueprint, SNOOZEBOT_PLUGIN)
async def snoozebot_plugin(name: str) -> Any:
    status = await guarded(current_daemon().host.status(name))
    return {"name": status.name, "provider": status.name, "version": status.version,
            "status": status.state, "loaded": status.loaded}  # fmt: skip


@route(blueprint, SNOOZEBOT_LOAD)
async def snoozebot_load() -> Any:
    await principal("plugins:manage")
    body = await json_body()
    name = field(body, "plugin_name", str, aliases=("plugin",))
    timeout = field(body, "timeout_seconds", float, default=30.0)
    retries = field(body, "retries", int, default=0)
    if timeout <= 0 or not 0 <= retries <= MAX_LOAD_RETRIES:
        raise HTTPProblem(
            400,
            "Bad request",
            f"timeout_seconds must be > 0 and retries 0 to {MAX_LOAD_RETRIES},"
            f" got {timeout} and {retries}",
        )
    host = current_daemon().host
    try:
        await host.status(name)  # an unknown name is a 404 whatever the timeout
    except PluginNotFound as exc:
        raise from_error(exc, plugin=name) from None
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            await trio.sleep(_RETRY_BACKOFF.cap(attempt))  # back off between tries
        try:
            with trio.fail_after(timeout):
                await host.load(name)
            status = await host.status(name)
            return {"success": True, "plugin": name, "version": status.version,
                    "status": status.state}  # fmt: skip
        except (PluginNotFound, PluginRefused) as exc:
            raise from_error(exc, plugin=name) from None  # retrying cannot help
        except (PluginError, ActorError, trio.TooSlowError) as exc:
            last = exc
    if isinstance(last, trio.TooSlowError):
        raise HTTPProblem(504, "Timed out", f"{name!r} did not load in {timeout}s")
    assert last is not None
    raise from_error(last, plugin=name)


@route(blueprint, SNOOZEBOT_UNLOAD)
async def snoozebot_unload() -> Any:
    await principal("plugins:manage")
    body = await json_body()
    name = field(body, "plugin_name", str, aliases=("plugin",))
    force = field(body, "force", bool, default=False)
    host = current_daemon().host
    if force:
        await guarded(host.unload(name, force=True), plugin=name)
    else:
        await guarded(host.unload(name), plugin=name)
    return {"success": True, "plugin": name}
