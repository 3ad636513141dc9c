"""What every route module shares: the daemon serving the request, the caller (a
token's principal and its scopes), the JSON body and its fields, and the runtime's
typed errors turned into problems.

The daemon is the app's extension ``app.extensions[DAEMON]`` (set by
:func:`api._http._app.create_app`), reached through Quart's ``current_app``: route
modules import these helpers instead of receiving them as closures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable
from typing import Any

from quart import current_app, g, request
from quart_trio import QuartTrio

from cws_actors import ActorError, PluginError

from .._auth import AuthError, Principal, authenticate, require
from .._daemon import Daemon
from .._metrics import UNMATCHED
from ._bodies import BodyTooLarge, JSONRefused, parse_json
from ._problems import HTTPProblem, from_error

DAEMON = "cws.daemon"
"""The key of the daemon among the app's extensions."""


def attach_daemon(app: QuartTrio, daemon: Daemon) -> None:
    """Make ``daemon`` what :func:`current_daemon` answers in ``app``'s requests."""
    app.extensions[DAEMON] = daemon


def current_daemon() -> Daemon:
    """The daemon whose app serves the current request."""
    daemon: Daemon = current_app.extensions[DAEMON]
    return daemon


async def principal(*scopes: str) -> Principal:
    """The caller, checked once per request; it must hold every one of ``scopes``.

    Raises:
        HTTPProblem: 401 without a valid token, 403 when a scope is missing.
    """
    try:
        who: Principal | None = g.get("principal")  # checked once per request
        if who is None:
            daemon = current_daemon()
            who = await authenticate(
                daemon.host.state, request.headers.get("Authorization"), daemon.plugin_tokens
            )
            g.principal = who
        require(who, *scopes)
    except AuthError as exc:
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        raise HTTPProblem(exc.status, title, str(exc)) from None
    return who


async def open_or_token() -> None:
    """Health, readiness and metrics are open on loopback unless configured otherwise (a
    token that is presented anyway must be valid: ``refuse_an_invalid_token``)."""
    daemon = current_daemon()
    if daemon.config.open_health and (request.remote_addr or "").startswith(("127.", "::1")):
        return
    await principal()


async def open_events_or_token(*scopes: str) -> None:
    """The event stream: a token holding ``scopes`` (``events:read``), unless ``[api]
    open_events`` and the caller is on loopback without a token (a token presented
    anyway has been checked by ``refuse_an_invalid_token``)."""
    daemon = current_daemon()
    loopback = (request.remote_addr or "").startswith(("127.", "::1"))
    if daemon.config.open_events and loopback and not request.headers.get("Authorization"):
        return
    await principal(*scopes)


async def body_key_caller(body: dict[str, Any], *scopes: str) -> None:
    """With ``[api] snoozebot_body_auth``: the caller is the token in the body's
    ``api_key`` (or, without one, in the ``Authorization`` header) and needs ``scopes``.

    Raises:
        HTTPProblem: 401 for an invalid key, 403 without a scope, 400 when ``api_key`` is
            not a string or names another token than the header.
    """
    key = body.get("api_key")
    if key is None or key == "":
        await principal(*scopes)
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
        require(who, *scopes)
    except AuthError as exc:
        raise HTTPProblem(403, "Forbidden", f"api_key: {exc}") from None


async def json_body(*, required: bool = True) -> Any:
    """The request's JSON body (None when it is empty and not ``required``), read as it
    streams in and refused as soon as it passes ``max_body_bytes``
    (:class:`~api._http._bodies.BoundedBody`).

    Raises:
        HTTPProblem: 413 over ``max_body_bytes``, 400 when missing, not JSON, or JSON
            outside the bounds of :func:`~api._http._bodies.parse_json`.
    """
    try:
        raw = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    except BodyTooLarge as exc:
        raise HTTPProblem(
            413,
            "Body too large",
            f"a JSON body may be at most {exc.limit} bytes,"
            f" got {exc.declared if exc.declared is not None else 'more than that'}",
        ) from None
    if not raw.strip():
        if required:
            raise HTTPProblem(400, "Bad request", "this endpoint needs a JSON body")
        return None
    try:
        return parse_json(raw)
    except JSONRefused as exc:
        raise HTTPProblem(400, "JSON out of bounds", f"the body is refused: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, "Malformed JSON", f"the body is not valid JSON: {exc}") from None


def field(
    body: Any, name: str, kind: type, *, default: Any = ..., aliases: tuple[str, ...] = ()
) -> Any:
    """``body[name]`` (or one of its ``aliases``) of type ``kind``, else ``default``.

    Raises:
        HTTPProblem: 400 when the body is not an object, the value has another type, or
            it is missing and there is no default.
    """
    if not isinstance(body, dict):
        raise HTTPProblem(400, "Bad request", "the body must be a JSON object")
    for key in (name, *aliases):
        if key in body:
            value = body[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if kind is float and isinstance(value, float) and not math.isfinite(value):
                raise HTTPProblem(
                    400, "Bad request", f"{key!r} must be a finite number, got {value!r}"
                )
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise HTTPProblem(
                    400, "Bad request", f"{key!r} must be {kind.__name__}, got {value!r}"
                )
            return value
    if default is ...:
        raise HTTPProblem(400, "Bad request", f"the body needs {name!r}")
    return default


async def guarded(work: Awaitable[Any], *, plugin: str | None = None) -> Any:
    """``await work``, its runtime or host error answered as a problem."""
    try:
        return await work
    except (ActorError, PluginError) as exc:
        raise from_error(exc, plugin=plugin) from None


PLUGIN_ROUTE = "cws_plugin_route"
"""The key under ``g`` of the template a plugin endpoint matched (``/api/v1/web/{item}``)."""


def route_name() -> str:
    """The matched rule (``/api/v1/plugins/<name>``) or plugin endpoint template, the
    metrics' ``route`` label; ``<unmatched>`` for any path that matched neither (the
    plugins' catch-all rule is no template: it would count every 404 as one route)."""
    plugin_route = g.get(PLUGIN_ROUTE)
    if plugin_route is not None:
        return str(plugin_route)
    rule = request.url_rule
    if rule is None or rule.endpoint == "plugin_endpoints.plugin_endpoint":
        return UNMATCHED
    return rule.rule
