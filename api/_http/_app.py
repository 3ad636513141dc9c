"""The app factory: one blueprint per resource, assembled. JSON in snake_case; every
error a problem document (:mod:`api._http._hooks`)."""

from __future__ import annotations

from quart import Blueprint, Response, request
from quart_trio import QuartTrio

from .._daemon import Daemon
from . import (
    _actors,
    _cli,
    _events,
    _faults,
    _health,
    _hooks,
    _instances,
    _pages,
    _plugin_endpoints,
    _plugins,
    _secrets,
    _snoozebot,
)
from ._bodies import bounded_request_class
from ._plugin_endpoints import PLUGIN_ENDPOINTS, PluginEndpoints
from ._problems import HTTPProblem
from ._requests import attach_daemon

BLUEPRINTS: tuple[Blueprint, ...] = (
    _hooks.blueprint,  # every request: token check, problems, counts
    _pages.blueprint,  # /, /openapi.json
    _health.blueprint,  # /healthz, /readyz, /metrics, /api/v1/daemon
    _plugins.blueprint,  # /api/v1/plugins
    _secrets.blueprint,  # /api/v1/secrets
    _snoozebot.blueprint,  # /api/plugins
    _actors.blueprint,  # /api/v1/actors, /api/v1/dead-letters
    _events.blueprint,  # /api/v1/events, /api/v1/events/stream
    _cli.blueprint,  # /api/v1/cli
    _instances.blueprint,  # /api/v1/instances
    _faults.blueprint,  # /api/v1/faults, /api/v1/chaos
    _plugin_endpoints.blueprint,  # whatever the plugins declare (the catch-all)
)


class _App(QuartTrio):
    async def make_default_options_response(self) -> Response:
        """``OPTIONS``: the methods the path's routes answer (werkzeug's list would count
        the plugins' catch-all rule, which matches every path); no route is a 404."""
        endpoints: PluginEndpoints = self.extensions[PLUGIN_ENDPOINTS]
        allowed = endpoints.allowed_methods(request.path)
        if not allowed:
            raise HTTPProblem(404, "Not found", f"no route {request.path}; see /openapi.json")
        allow = ", ".join(sorted({*allowed, "OPTIONS"}))
        response = Response("", status=204, headers={"Allow": allow})
        del response.headers["Content-Type"]  # no content
        return response


def create_app(daemon: Daemon) -> QuartTrio:
    """The app for ``daemon``; serve it with hypercorn's Trio worker.

    Create it before loading plugins: it tells the host which paths are the daemon's own
    (``PluginHost.route_guard``), so that no plugin shadows them.
    """
    app = _App("cws_actors_daemon")
    app.config["MAX_CONTENT_LENGTH"] = daemon.config.max_upload_bytes
    # Every body is held to its route's limit as it streams in, whatever its framing.
    app.request_class = bounded_request_class(
        body_limit=daemon.config.max_body_bytes,
        upload_limit=daemon.config.max_upload_bytes,
        spool_dir=daemon.config.home / "uploads",  # as the plugin routes stage them
    )
    app.config["RESPONSE_TIMEOUT"] = None  # event streams stay open
    attach_daemon(app, daemon)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    endpoints = app.extensions[PLUGIN_ENDPOINTS] = PluginEndpoints(daemon, app)
    daemon.host.route_guard = endpoints.guard
    return app
