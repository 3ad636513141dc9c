"""Snoozebot's routes (``/api/plugins``) with the shapes, status codes and defaults of
its Go handlers (``agent/api/plugin_handlers.go`` and ``get_plugin_handler.go``), so
that its clients keep working: list, discover, one plugin, load (one deadline, a number
of tries) and unload. The README's "Snoozebot's routes" table lists each route and
where we differ on purpose (errors are problem documents; an unknown plugin is a 404).

Each route is declared once (:mod:`api._http._routes`): its request and every answer
it gives, as /openapi.json shows them and as requests are checked before a handler runs.

Snoozebot's provider name and version are, for us, the plugin's name and version.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from quart import Blueprint, redirect, request

from cws_actors import ActorError, PluginError, PluginNotFound, PluginRefused

from ._problems import PROBLEM_TYPE, HTTPProblem, from_error
from ._requests import current_daemon, guarded, principal
from ._routes import Access, Body, Reply, Route, checked_body, path, query, route
from ._shapes import BOOLEAN, INTEGER, STRING, array, obj

blueprint = Blueprint("snoozebot", __name__)

DEFAULT_TIMEOUT = 30
"""``timeout_seconds`` when it is absent, 0 or negative (Snoozebot's default)."""
DEFAULT_TRIES = 1
"""``retries`` when it is absent, 0 or negative: it counts tries, so 1 is no retry."""
MAX_TIMEOUT = 3600
"""The longest ``timeout_seconds`` accepted (Snoozebot has no bound; ours keeps a
request from holding a worker for days)."""
MAX_TRIES = 100
"""The most tries ``retries`` may ask for (they all share one deadline anyway)."""
RETRY_DELAY = 0.5
"""Seconds between two tries, as in Snoozebot."""
AUTOLOAD_TIMEOUT = 10
"""Seconds ``GET /api/plugins/discover?autoload=true`` gives each load, as in Snoozebot."""
_REFUSED_FOR_GOOD = ("disabled",)
"""Refusals a retry cannot change: the operator's choice."""

# The routes' declarations (``_routes``): the document's operations and the checks made
# before each handler runs; the README's table "Snoozebot's routes" row by row.
MANAGE = ("plugins:manage",)


def _exact(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with no other members: Snoozebot's Go structs have these and no more."""
    return schema | {"additionalProperties": False}


def _maybe(kind: str, **bounds: Any) -> dict[str, Any]:
    """A Go field's JSON: its type, or null (Go decodes null as the zero value)."""
    return {"type": [kind, "null"], **bounds}


_ACTIVE = {"type": "string", "enum": ["active"]}
LIST_ITEM = _exact(obj(
    ["name", "provider", "version", "status"],
    name=STRING, provider=STRING, version=STRING,
    status={"type": "string", "enum": ["active", "error"],
            "description": "error: loaded, but its actor is not running (no provider, no"
            " version)"},
))  # fmt: skip
DISCOVER_ITEM = _exact(obj(
    ["name", "loaded"], name=STRING, loaded=BOOLEAN,
    provider={**STRING, "description": "only when loaded (Go's omitempty)"},
    version={**STRING, "description": "only when loaded (Go's omitempty)"},
))  # fmt: skip
ONE = _exact(obj(
    ["name", "provider", "version", "status", "path"],
    name=STRING, provider=STRING, version=STRING, status=_ACTIVE,
    path={**STRING, "description": "the plugin folder and the name"},
))  # fmt: skip
_LOADED_FIELDS = {
    "success": {"type": "boolean", "enum": [True]}, "plugin_name": STRING,
    "provider_name": STRING, "provider_version": STRING,
}  # fmt: skip
LOADED = {
    "oneOf": [
        _exact(obj(["success", "plugin_name", "provider_name", "provider_version",
                    "attempts"], **_LOADED_FIELDS,
                   attempts={**INTEGER, "minimum": 1, "description": "the tries it took"})),
        _exact(obj(["success", "plugin_name", "provider_name", "provider_version",
                    "already_loaded"], **_LOADED_FIELDS,
                   already_loaded={"type": "boolean", "enum": [True]})),
    ]
}  # fmt: skip
LOAD_FAILED = obj(
    ["type", "title", "status", "detail", "attempts", "plugin_name"],
    type=STRING, title=STRING, status=INTEGER,
    detail={**STRING, "description": "Failed to load plugin after N attempts: why"},
    attempts=INTEGER, plugin_name=STRING,
)  # fmt: skip
UNLOADED = {
    "oneOf": [
        _exact(obj(
            ["success", "plugin_name", "provider_name", "provider_version", "status",
             "duration_ms"],
            success={"type": "boolean", "enum": [True]}, plugin_name=STRING,
            provider_name=STRING, provider_version=STRING,
            status={"type": "string", "enum": ["unloaded"]},
            duration_ms={**INTEGER, "minimum": 0},
        )),
        _exact(obj(
            ["success", "plugin_name", "status", "message"],
            success={"type": "boolean", "enum": [True]}, plugin_name=STRING,
            status={"type": "string", "enum": ["not_loaded"]}, message=STRING,
        )),
    ]
}  # fmt: skip

_GIVEN = {
    "type": "string", "minLength": 1,
    "description": "the plugin's name in 'plugin_name' or 'plugin', not empty (null or \"\""
    " is missing)",
}  # fmt: skip
_NAME_GIVEN = {
    # plugin_name, or the seed's plugin: null or "" is missing, as in Go.
    "anyOf": [
        {"required": ["plugin_name"], "properties": {"plugin_name": _GIVEN}},
        {"required": ["plugin"], "properties": {"plugin": _GIVEN}},
    ],
    "description": "a JSON object naming the plugin in 'plugin_name' (or 'plugin'), not empty",
}
_NAMES = {
    "plugin_name": _maybe("string", description="the plugin's name"),
    "plugin": _maybe("string", description="the plugin's name (the seed's field)"),
    "api_key": _maybe(
        "string", description="a cws token holding plugins:manage, read with [api]"
        " snoozebot_body_auth only (as if sent as Authorization: Bearer)",
    ),
}  # fmt: skip

SNOOZEBOT_LIST = Route(
    "get", "/api/plugins", "Snoozebot: the loaded plugins",
    (Reply(200, "The loaded plugins", _exact(obj(["plugins", "count"],
                                                 plugins=array(LIST_ITEM), count=INTEGER))),),
)  # fmt: skip
SNOOZEBOT_SLASH = Route(
    "get", "/api/plugins/", "Snoozebot: a redirect to /api/plugins",
    (Reply(302, "Found: see /api/plugins", {"type": "string"}, "text/html",
           headers={"Location": "/api/plugins"}),),
)  # fmt: skip
SNOOZEBOT_DISCOVER = Route(
    "get", "/api/plugins/discover", "Snoozebot: the discovered plugins",
    (Reply(200, "What the sources hold, loaded or not", _exact(obj(
        ["plugins", "count", "directory"], plugins=array(DISCOVER_ITEM), count=INTEGER,
        directory=STRING))),),
    params=(query("autoload", {
        "type": "string",
        "description": "exactly 'true' (as in Snoozebot): load each plugin that is not"
        " loaded, 10 s each, which needs plugins:manage; any other value does not",
    }, "'true' loads what is not loaded"),),
    problems=(403,),
)  # fmt: skip
SNOOZEBOT_PLUGIN = Route(
    "get", "/api/plugins/{name}", "Snoozebot: one loaded plugin",
    (Reply(200, "The plugin", ONE),),
    params=(path("name", "the plugin's name"),),
    problems=(404,),
)  # fmt: skip
SNOOZEBOT_LOAD = Route(
    "post", "/api/plugins/load", "Snoozebot: load a plugin (one deadline, a number of tries)",
    (Reply(200, "Loaded, or already loaded", LOADED),
     Reply(500, "Failed to load plugin after N attempts (a timeout included): a problem"
           " document with attempts and plugin_name", LOAD_FAILED, PROBLEM_TYPE)),
    Access.BODY_KEY, MANAGE,
    body=Body(_NAME_GIVEN | {
        "type": "object",
        "properties": _NAMES | {
            "timeout_seconds": _maybe("integer", maximum=MAX_TIMEOUT, description=(
                f"a whole number of seconds for every try together, at most {MAX_TIMEOUT}"
                f" (absent, null, 0 or less: {DEFAULT_TIMEOUT})")),
            "retries": _maybe("integer", maximum=MAX_TRIES, description=(
                f"a whole number of tries in all, at most {MAX_TRIES} (absent, null, 0 or"
                f" less: {DEFAULT_TRIES}); {RETRY_DELAY} s between two")),
        },
    }, examples=({"plugin_name": "my-plugin", "timeout_seconds": 30, "retries": 3},)),
    problems=(404, 409),
)  # fmt: skip
SNOOZEBOT_UNLOAD = Route(
    "post", "/api/plugins/unload", "Snoozebot: unload a plugin",
    (Reply(200, "Unloaded; or, with force, it was not loaded", UNLOADED),),
    Access.BODY_KEY, MANAGE,
    body=Body(_NAME_GIVEN | {
        "type": "object",
        "properties": _NAMES | {
            "force": _maybe("boolean", description="true or false: true makes a plugin that"
                            " is not loaded a 200 not_loaded (not a 400), and kills a"
                            " subprocess plugin at once"),
        },
    }, examples=({"plugin_name": "my-plugin", "force": True},)),
)  # fmt: skip


@route(blueprint, SNOOZEBOT_LIST)
async def snoozebot_list() -> Any:
    host = current_daemon().host
    plugins = []
    for name in host.loaded_names():
        try:
            status = await host.status(name)
        except PluginError:
            status = None
        if status is None or status.state != "running":
            # Snoozebot's entry for a loaded plugin it cannot reach: no provider, no version.
            plugins.append({"name": name, "provider": "", "version": "", "status": "error"})
        else:
            plugins.append(
                {"name": name, "provider": name, "version": status.version, "status": "active"}
            )
    return {"plugins": plugins, "count": len(plugins)}


@route(blueprint, SNOOZEBOT_SLASH)
async def snoozebot_slash() -> Any:
    return redirect("/api/plugins", 302)


@route(blueprint, SNOOZEBOT_DISCOVER)
async def snoozebot_discover() -> Any:
    daemon = current_daemon()
    host = daemon.host
    autoload = request.args.get("autoload") == "true"  # exactly "true", as in Snoozebot
    if autoload:
        await principal("plugins:manage")  # a GET that loads: it changes things
    found = await host.discover()
    loaded = set(host.loaded_names())
    plugins = []
    for plugin in found:
        item: dict[str, Any] = {"name": plugin.name, "loaded": plugin.name in loaded}
        if autoload and not item["loaded"]:
            with trio.move_on_after(AUTOLOAD_TIMEOUT):
                try:
                    await host.load(plugin.name)
                    item["loaded"] = True
                except (PluginError, ActorError):
                    pass  # Snoozebot logs it and lists the plugin as not loaded
        if item["loaded"]:
            item["provider"], item["version"] = plugin.name, plugin.version
        plugins.append(item)
    return {"plugins": plugins, "count": len(plugins), "directory": str(host.user_dir)}


@route(blueprint, SNOOZEBOT_PLUGIN)
async def snoozebot_plugin(name: str) -> Any:
    # GET /api/plugins/load and /unload: 405, Allow: POST (``_routes``: the concrete
    # path is its own resource, as Snoozebot routes every method of it to POST).
    host = current_daemon().host
    if name not in host.loaded_names():
        raise HTTPProblem(404, "Not found", f"Plugin {name!r} is not loaded")
    status = await guarded(host.status(name), plugin=name)
    return {
        "name": name,
        "provider": name,
        "version": status.version,
        "status": "active",
        "path": f"{host.user_dir}/{name}",  # as Snoozebot: the plugin folder and the name
    }


@route(blueprint, SNOOZEBOT_LOAD)
async def snoozebot_load() -> Any:
    body: dict[str, Any] = checked_body()
    name = _plugin_name(body)
    timeout = _whole(body, "timeout_seconds", MAX_TIMEOUT) or DEFAULT_TIMEOUT
    tries = _whole(body, "retries", MAX_TRIES) or DEFAULT_TRIES
    host = current_daemon().host
    if name in host.loaded_names():
        status = await guarded(host.status(name), plugin=name)
        return {"success": True, "plugin_name": name, "provider_name": name,
                "provider_version": status.version, "already_loaded": True}  # fmt: skip
    attempt, last = 0, "no attempt"
    with trio.move_on_after(timeout) as deadline:  # one deadline for every try
        for attempt in range(1, tries + 1):
            try:
                status = await host.load(name)
                return {"success": True, "plugin_name": name, "provider_name": name,
                        "provider_version": status.version, "attempts": attempt}  # fmt: skip
            except PluginNotFound as exc:
                raise from_error(exc, plugin=name) from None  # no such plugin: a 404
            except PluginRefused as exc:
                if exc.reason in _REFUSED_FOR_GOOD:
                    raise from_error(exc, plugin=name) from None
                last = str(exc)
            except (PluginError, ActorError) as exc:
                last = str(exc)
            if attempt < tries:
                await trio.sleep(RETRY_DELAY)
    if deadline.cancelled_caught:
        last = f"no answer within timeout_seconds={timeout}"
    raise HTTPProblem(
        500, "Load failed", f"Failed to load plugin after {attempt} attempts: {last}",
        attempts=attempt, plugin_name=name,
    )  # fmt: skip


@route(blueprint, SNOOZEBOT_UNLOAD)
async def snoozebot_unload() -> Any:
    body: dict[str, Any] = checked_body()
    name = _plugin_name(body)
    force = body.get("force")
    if force is not None and not isinstance(force, bool):
        raise HTTPProblem(400, "Bad request", f"'force' must be true or false, got {force!r}")
    host = current_daemon().host
    if name not in host.loaded_names():
        if force:
            return {"success": True, "plugin_name": name, "status": "not_loaded",
                    "message": "Plugin was not loaded, nothing to unload"}  # fmt: skip
        raise HTTPProblem(
            400, "Not loaded", f"Plugin {name!r} is not loaded (send \"force\": true to"
            " treat that as done)",
        )  # fmt: skip
    version = ""
    try:
        version = (await host.status(name)).version
    except PluginError:
        pass  # Snoozebot answers with empty provider fields then
    started = time.monotonic()
    try:
        await host.unload(name, force=bool(force))
    except (PluginError, ActorError) as exc:
        raise HTTPProblem(500, "Unload failed", f"Failed to unload plugin: {exc}") from None
    return {
        "success": True,
        "plugin_name": name,
        "provider_name": name if version else "",
        "provider_version": version,
        "status": "unloaded",
        "duration_ms": int((time.monotonic() - started) * 1000),
    }


def _plugin_name(body: dict[str, Any]) -> str:
    """``plugin_name`` (or the seed's ``plugin``); null or "" is missing, as in Go."""
    for key in ("plugin_name", "plugin"):
        value = body.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise HTTPProblem(400, "Bad request", f"{key!r} must be str, got {value!r}")
        return value
    raise HTTPProblem(400, "Bad request", "Plugin name is required: send 'plugin_name'")


def _whole(body: dict[str, Any], key: str, most: int) -> int:
    """A whole number of ``body[key]``: absent, null, 0 and below are 0 (the default);
    Snoozebot's Go int refuses fractions and strings, and we refuse above ``most``.
    ``30.0`` is 30, as JSON Schema reads it (the document's ``integer``; Go refuses it)."""
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPProblem(
            400, "Bad request", f"{key!r} must be a finite whole number (0 or less for the"
            f" default), got {value!r}",
        )  # fmt: skip
    if value > most:
        raise HTTPProblem(400, "Bad request", f"{key!r} is at most {most}, got {value}")
    return max(value, 0)
