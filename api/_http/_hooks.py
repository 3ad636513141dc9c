"""What runs around every request: the ``Host:`` header is checked (DNS rebinding), a
token is needed unless reads are open, a presented token is checked on every route, errors
become problem documents, and requests are counted for the metrics."""

from __future__ import annotations

import functools
import logging
import uuid

from quart import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from .._metrics import method_label
from ._bodies import BoundedBody, BoundedRequest
from ._hosts import allowed_names, host_allowed, host_name
from ._plugin_endpoints import PLUGIN_ENDPOINTS, PluginEndpoints, method_not_allowed
from ._problems import HTTPProblem, problem_response
from ._requests import current_daemon, principal, route_name
from ._routes import ROUTES, Access

log = logging.getLogger("cws.http")

blueprint = Blueprint("hooks", __name__)


def open_paths() -> frozenset[str]:
    """What answers without a token even when ``open_reads`` is off: the routes declared
    open or health (``open_health`` decides those), and the event stream, which checks
    its caller itself (the scope ``events:read``, or ``[api] open_events``)."""
    return frozenset(
        route.path
        for route in ROUTES
        if route.access in (Access.OPEN, Access.HEALTH, Access.EVENTS)
    )


def body_key_paths() -> frozenset[str]:
    """With ``[api] snoozebot_body_auth``, these find their token in the body
    (``api_key``), and check it themselves."""
    return frozenset(route.path for route in ROUTES if route.access is Access.BODY_KEY)


@blueprint.before_app_request
async def refuse_a_foreign_host() -> None:
    # First: a request for another name (DNS rebinding) learns nothing, not even
    # whether a token is valid.
    config = current_daemon().config
    header = request.headers.get("Host", "")
    if not header.strip():
        raise HTTPProblem(400, "Bad request", "the request has no Host header")
    if not host_allowed(host_name(header), config):
        expected = ", ".join([*allowed_names(config), "a loopback address"])
        raise HTTPProblem(
            421,
            "Misdirected request",
            f"this daemon does not answer to the host {header!r}; expected {expected}"
            " (add a name to [daemon] allowed_hosts)",
        )


# The table is complete once the app is made.
_OPEN_PATHS = functools.cache(open_paths)
_BODY_KEY_PATHS = functools.cache(body_key_paths)


@blueprint.before_app_request
async def refuse_an_invalid_token() -> None:
    # A token that is presented must be valid on every route: reads, the open health
    # routes and unknown paths too. The client meant to authenticate; serving it as
    # anonymous would hide a revoked, expired or mistyped token until a write fails.
    if request.headers.get("Authorization"):
        who = await principal()
        if who.plugin is not None:
            _plugin_may_call(who.plugin)


READS = frozenset({"GET", "HEAD", "OPTIONS"})


def _plugin_may_call(plugin: str) -> None:
    """A plugin's token (``ctx.api``) holds exactly the scopes it was granted: the routes
    that change things check theirs, and the daemon's own reads, which any operator's
    token may make, need ``api:read`` (a plugin endpoint checks its own scopes, and the
    event stream ``events:read``)."""
    if request.method not in READS or request.path in _OPEN_PATHS():
        return
    rule = request.url_rule
    if rule is not None and rule.endpoint == "plugin_endpoints.plugin_endpoint":
        return
    if not g.principal.allows("api:read"):
        raise HTTPProblem(
            403,
            "Forbidden",
            f"plugin {plugin!r} reads the daemon's routes only with the scope api:read;"
            " its token has " + (", ".join(sorted(g.principal.scopes)) or "no scope"),
        )


@blueprint.before_app_request
async def require_a_token_to_read() -> None:
    # Unless [daemon] open_reads: every route needs a valid token but health, readiness
    # and metrics (``open_health`` decides those), the dashboard page (it asks for one)
    # and the event stream (its own rule). The routes that change things check their
    # scopes themselves.
    config = current_daemon().config
    if config.open_reads or request.path in _OPEN_PATHS():
        return
    if config.snoozebot_body_auth and request.path in _BODY_KEY_PATHS():
        return  # the route reads the body's api_key (or the header) itself
    await principal()


@blueprint.app_errorhandler(HTTPProblem)
async def on_problem(problem: HTTPProblem) -> Response:
    if problem.status == 429:
        current_daemon().metrics.rate_limited.labels(route=route_name()).inc()
    return problem_response(problem)


@blueprint.app_errorhandler(HTTPException)
async def on_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 405:
        # RFC 9110: a 405 lists what the resource allows (werkzeug's list would count
        # the plugins' catch-all rule, which matches every path).
        endpoints: PluginEndpoints = current_app.extensions[PLUGIN_ENDPOINTS]
        allowed = endpoints.allowed_methods(request.path)
        if allowed:
            return problem_response(method_not_allowed(request.method, request.path, allowed))
        return problem_response(
            HTTPProblem(404, "Not found", f"no route {request.path}; see /openapi.json")
        )
    detail = {
        404: f"no route {request.path}; see /openapi.json",
        405: f"{request.method} is not allowed on {request.path}",
        413: f"the body is over the limit of {_body_limit()} bytes",
    }.get(status, error.description or "")
    return problem_response(HTTPProblem(status, error.name, detail))


def _body_limit() -> int:
    """The limit the current request's body was held to (its route's)."""
    body = request.body
    if isinstance(body, BoundedBody) and body.limit is not None:
        return body.limit
    return current_daemon().config.max_upload_bytes


@blueprint.app_errorhandler(Exception)
async def on_crash(error: Exception) -> Response:
    # The client learns only that it failed and the id to quote: the exception's text
    # can name files and folders of the daemon's host, so it goes to the log alone.
    correlation_id = uuid.uuid4().hex[:16]
    log.exception(
        "unhandled error in %s %s (correlation id %s)", request.method, request.path,
        correlation_id,
    )  # fmt: skip
    return problem_response(
        HTTPProblem(
            500,
            "Internal error",
            f"internal error; the daemon's log has the details under correlation id"
            f" {correlation_id}",
            correlation_id=correlation_id,
        )
    )


@blueprint.after_app_request
async def close_if_the_body_is_unread(response: Response) -> Response:
    # An answer given before the request's body has arrived (a 401, 405 or 400 that did
    # not need it) leaves the rest of that body on the connection, so the daemon closes
    # that connection after the answer (api/_connections.py); the answer says so
    # (RFC 9112, 9.6), and the client sends its next request on a new connection.
    body = request.body
    declared = request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "")
    if declared and isinstance(body, BoundedBody) and not body.complete:
        response.headers["Connection"] = "close"
    return response


@blueprint.after_app_request
async def count(response: Response) -> Response:
    current_daemon().metrics.requests.labels(
        method=method_label(request.method), route=route_name(), status=str(response.status_code)
    ).inc()
    return response


@blueprint.teardown_app_request
async def close_spooled_uploads(_error: BaseException | None) -> None:
    # An upload's parts were spooled to anonymous files: once the request is answered
    # (or failed), their space is given back now, not when the request is collected.
    if isinstance(request, BoundedRequest):
        request.close_spooled()
