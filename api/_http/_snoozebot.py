"""Snoozebot's routes (``/api/plugins``) with the shapes, status codes and defaults of
its Go handlers (``agent/api/plugin_handlers.go`` and ``get_plugin_handler.go``), so
that its clients keep working: list, discover, one plugin, load (one deadline, a number
of tries) and unload. The README's "Snoozebot's routes" table lists each route and
where we differ on purpose (errors are problem documents; an unknown plugin is a 404).

Snoozebot's provider name and version are, for us, the plugin's name and version.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from quart import Blueprint, g, redirect, request

from cws_actors import ActorError, PluginError, PluginNotFound, PluginRefused

from .._auth import AuthError, authenticate, require
from ._problems import HTTPProblem, from_error
from ._requests import current_daemon, guarded, json_body, principal

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


@blueprint.get("/api/plugins")
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


@blueprint.get("/api/plugins/")
async def snoozebot_slash() -> Any:
    return redirect("/api/plugins", 302)


@blueprint.get("/api/plugins/discover")
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


@blueprint.get("/api/plugins/<name>")
async def snoozebot_plugin(name: str) -> Any:
    if name in ("load", "unload"):
        # Snoozebot routes every method of these paths to their POST handlers.
        raise HTTPProblem(
            405, "Method not allowed", f"{request.method} is not allowed on {request.path};"
            " use POST", headers={"Allow": "POST"},
        )  # fmt: skip
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


@blueprint.post("/api/plugins/load")
async def snoozebot_load() -> Any:
    body = await _authenticated_body()
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


@blueprint.post("/api/plugins/unload")
async def snoozebot_unload() -> Any:
    body = await _authenticated_body()
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


async def _authenticated_body() -> dict[str, Any]:
    """The JSON object of a request whose caller holds ``plugins:manage``: checked on
    the request's head (the ``Authorization`` header) before a byte of the body is read,
    unless ``[api] snoozebot_body_auth`` lets the body's ``api_key`` stand for it."""
    body_auth = current_daemon().config.snoozebot_body_auth
    if not body_auth:
        await principal("plugins:manage")
    body = await json_body()
    if not isinstance(body, dict):
        raise HTTPProblem(400, "Bad request", "the body must be a JSON object")
    if body_auth:
        await _body_caller(body)
    return body


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
    Snoozebot's Go int refuses fractions and strings, and we refuse above ``most``."""
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPProblem(
            400, "Bad request", f"{key!r} must be a finite whole number (0 or less for the"
            f" default), got {value!r}",
        )  # fmt: skip
    if value > most:
        raise HTTPProblem(400, "Bad request", f"{key!r} is at most {most}, got {value}")
    return max(value, 0)


async def _body_caller(body: dict[str, Any]) -> None:
    """With ``[api] snoozebot_body_auth``: the caller is the token in ``api_key`` (or,
    without one, in the ``Authorization`` header) and needs ``plugins:manage``."""
    key = body.get("api_key")
    if key is None or key == "":
        await principal("plugins:manage")
        return
    if not isinstance(key, str):
        raise HTTPProblem(400, "Bad request", f"'api_key' must be str, got {key!r}")
    try:
        daemon = current_daemon()
        who = await authenticate(daemon.host.state, f"Bearer {key}", daemon.plugin_tokens)
    except AuthError as exc:
        raise HTTPProblem(401, "Unauthorized", f"api_key: {exc}") from None
    header_caller = g.get("principal")  # a presented header was checked by the hooks
    if header_caller is not None and header_caller.token_id != who.token_id:
        raise HTTPProblem(
            400, "Bad request", "the Authorization header and 'api_key' are different"
            " tokens; send one of them",
        )  # fmt: skip
    g.principal = who
    try:
        require(who, "plugins:manage")
    except AuthError as exc:
        raise HTTPProblem(403, "Forbidden", f"api_key: {exc}") from None
