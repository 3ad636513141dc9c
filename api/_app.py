"""The HTTP app (quart-trio): health, metrics, plugins, actors, events, plugin CLI
commands and plugin endpoints. JSON in snake_case; every error a problem document."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from cws_actors import ActorError, PluginError, PluginNotFound, PluginRefused, check_topic

from ._auth import AuthError, Principal, authenticate, require
from ._daemon import Daemon
from ._faults import mount_faults
from ._instances import mount_instances
from ._openapi import openapi_document
from ._plugin_routes import PluginRoutes
from ._problems import HTTPProblem, from_error, problem_response
from ._views import actor_view, dead_letter_view, event_view, plugin_view

log = logging.getLogger("cws.http")

Handler = Callable[..., Awaitable[Any]]

MAX_LOAD_RETRIES = 10
"""Retries ``POST /api/plugins/load`` allows (with backoff up to 2 s between them)."""


def create_app(daemon: Daemon) -> QuartTrio:
    """The app for ``daemon``; serve it with hypercorn's Trio worker."""
    app = QuartTrio("cws_actors_daemon")
    app.config["MAX_CONTENT_LENGTH"] = daemon.config.max_upload_bytes
    app.config["RESPONSE_TIMEOUT"] = None  # event streams stay open
    plugin_routes = PluginRoutes(daemon, app)
    daemon.host.route_guard = plugin_routes.guard

    async def principal(*scopes: str) -> Principal:
        try:
            who: Principal | None = g.get("principal")  # checked once per request
            if who is None:
                who = await authenticate(daemon.host.state, request.headers.get("Authorization"))
                g.principal = who
            require(who, *scopes)
        except AuthError as exc:
            title = "Unauthorized" if exc.status == 401 else "Forbidden"
            raise HTTPProblem(exc.status, title, str(exc)) from None
        return who

    @app.before_request
    async def refuse_an_invalid_token() -> None:
        # A token that is presented must be valid on every route: reads, the open health
        # routes and unknown paths too. The client meant to authenticate; serving it as
        # anonymous would hide a revoked, expired or mistyped token until a write fails.
        if request.headers.get("Authorization"):
            await principal()

    async def json_body(*, required: bool = True) -> Any:
        # Read it (Quart stops at MAX_CONTENT_LENGTH, the upload limit) before refusing,
        # so that the client is not cut off half way through sending.
        raw = await request.get_data(cache=True)
        if len(raw) > daemon.config.max_body_bytes:
            raise HTTPProblem(
                413,
                "Body too large",
                f"a JSON body may be at most {daemon.config.max_body_bytes} bytes, got {len(raw)}",
            )
        if not raw.strip():
            if required:
                raise HTTPProblem(400, "Bad request", "this endpoint needs a JSON body")
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPProblem(400, "Malformed JSON", f"the body is not valid JSON: {exc}") from None

    def field(
        body: Any, name: str, kind: type, *, default: Any = ..., aliases: tuple[str, ...] = ()
    ) -> Any:
        if not isinstance(body, dict):
            raise HTTPProblem(400, "Bad request", "the body must be a JSON object")
        for key in (name, *aliases):
            if key in body:
                value = body[key]
                if kind is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                    raise HTTPProblem(
                        400, "Bad request", f"{key!r} must be {kind.__name__}, got {value!r}"
                    )
                return value
        if default is ...:
            raise HTTPProblem(400, "Bad request", f"the body needs {name!r}")
        return default

    async def guarded(work: Awaitable[Any], *, plugin: str | None = None) -> Any:
        try:
            return await work
        except (ActorError, PluginError) as exc:
            raise from_error(exc, plugin=plugin) from None

    # ------------------------------------------------------------------ errors, metrics

    @app.errorhandler(HTTPProblem)
    async def on_problem(problem: HTTPProblem) -> Response:
        if problem.status == 429:
            daemon.metrics.rate_limited.labels(route=_route()).inc()
        return problem_response(problem)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        detail = {
            404: f"no route {request.path}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"the body is over the limit of {daemon.config.max_upload_bytes} bytes",
        }.get(status, error.description or "")
        return problem_response(HTTPProblem(status, error.name, detail))

    @app.errorhandler(Exception)
    async def on_crash(error: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(
            HTTPProblem(500, "Internal error", f"{type(error).__name__}: {error}")
        )

    @app.after_request
    async def count(response: Response) -> Response:
        daemon.metrics.requests.labels(
            method=request.method, route=_route(), status=str(response.status_code)
        ).inc()
        return response

    # ------------------------------------------------------------------ health

    @app.get("/")
    async def dashboard() -> Any:
        from ._dashboard import dashboard_page

        return Response(dashboard_page(), content_type="text/html; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> Any:
        await _open_or_token(daemon, principal)
        return {"status": "ok", "uptime_seconds": round(time.time() - daemon.started_at, 3)}

    @app.get("/readyz")
    async def readyz() -> Any:
        await _open_or_token(daemon, principal)
        waiting = daemon.waiting_for()
        if waiting:
            raise HTTPProblem(503, "Not ready", "waiting for: " + "; ".join(waiting),
                              headers={"Retry-After": "1"}, waiting=waiting)  # fmt: skip
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Any:
        await _open_or_token(daemon, principal)
        return Response(
            daemon.metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/api/v1/daemon")
    async def daemon_info() -> Any:
        await principal()
        return {
            "version": importlib.metadata.version("cws-actors"),
            "url": daemon.url,
            "home": str(daemon.config.home),
            "config_source": daemon.config.source,
            "uptime_seconds": round(time.time() - daemon.started_at, 3),
            "reloads": daemon.reloads,
        }

    @app.get("/openapi.json")
    async def openapi() -> Any:
        return openapi_document(plugin_routes.endpoints())

    # ------------------------------------------------------------------ plugins

    @app.get("/api/v1/plugins")
    async def plugins() -> Any:
        statuses = await daemon.host.statuses()
        views = [plugin_view(daemon.host, status) for status in statuses]
        return {"plugins": views, "count": len(views)}

    @app.get("/api/v1/plugins/discover")
    async def discover() -> Any:
        found = await daemon.host.discover()
        return {
            "plugins": [
                {
                    "name": p.name,
                    "version": p.version,
                    "source": p.source,
                    "location": p.location,
                    "isolation": p.isolation.value,
                    "loaded": p.name in daemon.host.loaded_names(),
                    "problem": p.problem,
                }
                for p in found
            ],
            "count": len(found),
            "directory": str(daemon.host.user_dir),
        }

    @app.get("/api/v1/plugins/<name>")
    async def plugin(name: str) -> Any:
        status = await guarded(daemon.host.status(name))
        view = plugin_view(daemon.host, status)
        if status.loaded:
            view["history"] = [
                {"at": entry.at, "event": entry.event, "detail": entry.detail}
                for entry in await daemon.host.history(name)
            ][-20:]
            try:
                view["plugin_status"] = await daemon.host.plugin_status(name)
            except (ActorError, PluginError) as exc:
                view["plugin_status"] = {"error": str(exc)}
        return view

    operations: dict[str, Callable[[str], Awaitable[Any]]] = {
        "load": daemon.host.load,
        "unload": daemon.host.unload,
        "enable": daemon.host.enable,
        "disable": daemon.host.disable,
        "reload": daemon.host.reload,
    }

    @app.post("/api/v1/plugins/<name>/<operation>")
    async def plugin_operation(name: str, operation: str) -> Any:
        await principal("plugins:manage")
        if operation == "update":
            return await upload(name)
        if operation not in operations:
            raise HTTPProblem(
                404,
                "Not found",
                f"unknown operation {operation!r}; expected one of"
                f" {', '.join([*operations, 'update'])}",
            )
        await guarded(operations[operation](name), plugin=name)
        return plugin_view(daemon.host, await guarded(daemon.host.status(name)))

    @app.post("/api/v1/plugins/install")
    async def install() -> Any:
        await principal("plugins:manage")
        return await upload(None)

    async def upload(name: str | None) -> Any:
        files = await request.files
        archive = files.get("archive")
        if archive is None:
            raise HTTPProblem(
                400,
                "Bad request",
                "send the plugin as multipart/form-data with an 'archive' file"
                " (a .cwsplugin zip) and optionally a 'signature' file (its .minisig)",
            )
        status = await plugin_routes.install_upload(name, archive, files.get("signature"))
        return plugin_view(daemon.host, status), 201 if name is None else 200

    @app.delete("/api/v1/plugins/<name>")
    async def remove(name: str) -> Any:
        await principal("plugins:manage")
        purge = request.args.get("purge_data", "false").lower() in ("1", "true", "yes")
        await guarded(daemon.host.remove(name, purge_data=purge), plugin=name)
        return {"removed": name, "purged_data": purge}

    # Snoozebot's routes, with its JSON shapes, so that its clients keep working.

    @app.get("/api/plugins")
    async def snoozebot_list() -> Any:
        statuses = [s for s in await daemon.host.statuses() if s.loaded]
        return {
            "plugins": [
                {"name": s.name, "provider": s.name, "version": s.version, "status": s.state}
                for s in statuses
            ],
            "count": len(statuses),
        }

    @app.get("/api/plugins/discover")
    async def snoozebot_discover() -> Any:
        return await discover()

    @app.get("/api/plugins/<name>")
    async def snoozebot_plugin(name: str) -> Any:
        status = await guarded(daemon.host.status(name))
        return {"name": status.name, "provider": status.name, "version": status.version,
                "status": status.state, "loaded": status.loaded}  # fmt: skip

    @app.post("/api/plugins/load")
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
        try:
            await daemon.host.status(name)  # an unknown name is a 404 whatever the timeout
        except PluginNotFound as exc:
            raise from_error(exc, plugin=name) from None
        last: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                await trio.sleep(min(2.0, 0.1 * 2**attempt))  # back off between tries
            try:
                with trio.fail_after(timeout):
                    await daemon.host.load(name)
                status = await daemon.host.status(name)
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

    @app.post("/api/plugins/unload")
    async def snoozebot_unload() -> Any:
        await principal("plugins:manage")
        body = await json_body()
        name = field(body, "plugin_name", str, aliases=("plugin",))
        force = field(body, "force", bool, default=False)
        if force:
            await guarded(daemon.host.unload(name, force=True), plugin=name)
        else:
            await guarded(daemon.host.unload(name), plugin=name)
        return {"success": True, "plugin": name}

    # ------------------------------------------------------------------ actors

    @app.get("/api/v1/actors")
    async def actors() -> Any:
        return actor_view(daemon.runtime.actors())

    @app.get("/api/v1/actors/<path:path>")
    async def actor(path: str) -> Any:
        try:
            return actor_view(daemon.runtime.actors().find("/" + path.strip("/")))
        except KeyError:
            raise HTTPProblem(404, "Not found", f"no actor at /{path}") from None

    @app.post("/api/v1/actors/<path:path>/restart")
    async def restart(path: str) -> Any:
        await principal("admin")
        await guarded(daemon.runtime.restart("/" + path.strip("/")))
        return actor_view(daemon.runtime.actors().find("/" + path.strip("/")))

    @app.post("/api/v1/actors/<path:path>/clear-quarantine")
    async def clear_quarantine(path: str) -> Any:
        await principal("admin")
        await guarded(daemon.runtime.clear_quarantine("/" + path.strip("/")))
        return actor_view(daemon.runtime.actors().find("/" + path.strip("/")))

    @app.get("/api/v1/dead-letters")
    async def dead_letters() -> Any:
        try:
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise HTTPProblem(400, "Bad request", "limit must be an integer") from None
        letters = daemon.runtime.dead_letters()[-max(0, limit) :] if limit else []
        return {"dead_letters": [dead_letter_view(d) for d in letters], "count": len(letters)}

    # ------------------------------------------------------------------ events

    @app.post("/api/v1/events")
    async def publish() -> Any:
        await principal("events:publish")
        body = await json_body()
        topic = field(body, "topic", str)
        if not topic or any(not part for part in topic.split(".")) or set("*#") & set(topic):
            raise HTTPProblem(
                400,
                "Bad request",
                f"a topic is dot-separated words without wildcards, got {topic!r}",
            )
        try:
            check_topic(topic)  # the bus's own rule: letters, digits, '_' and '-'
        except ValueError as exc:
            raise HTTPProblem(400, "Bad request", str(exc)) from None
        if not daemon.plugins_loaded.is_set():
            # Subscriptions come with the plugins: an event published now would miss them.
            waiting = "; ".join(daemon.waiting_for())
            raise HTTPProblem(
                503, "Not ready",
                "plugins are still loading, and an event published now would miss their"
                f" subscriptions; retry once /readyz answers 200 ({waiting})",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        event = await daemon.runtime.publish(topic, body.get("payload"), source="http")
        return event_view(event), 202

    @app.get("/api/v1/events/stream")
    async def stream() -> Any:
        topics = [t for t in request.args.get("topics", "#").split(",") if t.strip()]
        try:
            subscription = daemon.runtime.bus.subscribe(*topics, buffer=1000)
        except ValueError as exc:
            raise HTTPProblem(400, "Bad request", str(exc)) from None

        async def events() -> AsyncIterator[bytes]:
            with subscription:
                yield b": connected\n\n"
                while True:
                    with trio.move_on_after(15) as idle:
                        event = await subscription.receive()
                    if idle.cancelled_caught:
                        yield b": keep-alive\n\n"
                        continue
                    # No `event:` field: EventSource's onmessage then sees every topic
                    # (the topic is in the data).
                    data = json.dumps(event_view(event))
                    yield f"id: {event.id}\ndata: {data}\n\n".encode()

        response = Response(events(), content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.timeout = None
        return response

    # ------------------------------------------------------------------ plugin CLI

    @app.get("/api/v1/cli/commands")
    async def cli_commands() -> Any:
        return {"commands": plugin_routes.cli_specs()}

    @app.post("/api/v1/cli/execute")
    async def cli_execute() -> Any:
        body = await json_body()
        argv = field(body, "args", list, aliases=("argv",))
        if not argv or not all(isinstance(word, str) for word in argv):
            raise HTTPProblem(400, "Bad request", "'args' must be a non-empty list of strings")
        return await plugin_routes.execute(argv, request.headers.get("Authorization"))

    mount_instances(app, daemon, principal, json_body)
    mount_faults(app, daemon, principal, json_body)
    plugin_routes.mount(principal, json_body)
    return app


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


async def _open_or_token(daemon: Daemon, principal: Callable[..., Awaitable[Principal]]) -> None:
    """Health, readiness and metrics are open on loopback unless configured otherwise (a
    token that is presented anyway must be valid: ``refuse_an_invalid_token``)."""
    if daemon.config.open_health and (request.remote_addr or "").startswith(("127.", "::1")):
        return
    await principal()
