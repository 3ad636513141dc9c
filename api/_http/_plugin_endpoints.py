"""Plugin endpoints, served at the paths their specs declare: one catch-all rule (the
lowest in werkzeug's order, so every core route wins), matched against the loaded
plugins' specs; each request becomes an envelope routed to the plugin's actor.

:class:`PluginEndpoints` also guards the core routes: the host asks it, as it loads a
plugin, whether a spec would shadow one of the daemon's own routes."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Any

import attrs
from quart import Blueprint, Response, current_app, g, request
from quart_trio import QuartTrio
from werkzeug.routing import Map, MapAdapter, Rule

from cws_actors import (
    ActorError,
    APIEndpointSpec,
    APIRequest,
    APIResult,
    PluginError,
    RateLimit,
    Source,
    TokenBuckets,
    routes_overlap,
)

from .._daemon import Daemon
from ._problems import HTTPProblem, from_error, rate_limit_headers
from ._requests import PLUGIN_ROUTE, current_daemon, json_body, principal
from ._routes import resource

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
PLUGIN_ENDPOINTS = "plugin_endpoints"
"""The key of the app's :class:`PluginEndpoints` among its extensions."""

blueprint = Blueprint("plugin_endpoints", __name__)
_PLUGIN_ENDPOINT = "plugin_endpoints.plugin_endpoint"


@attrs.frozen
class _Route:
    plugin: str
    spec: APIEndpointSpec
    pattern: re.Pattern[str]


def _compile(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-zA-Z_][a-zA-Z0-9_]*\})", path)
    regex = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(regex)


@attrs.define(eq=False)
class PluginEndpoints:
    """The plugins' routes of one app, with their rate-limit buckets."""

    daemon: Daemon
    app: QuartTrio
    _buckets: TokenBuckets[tuple[str, str, str, str]] = attrs.field(factory=TokenBuckets)
    _core_map: Map | None = None

    def endpoints(self) -> list[tuple[str, APIEndpointSpec]]:
        return self.daemon.host.api_endpoints()

    def _core(self) -> MapAdapter:
        """The daemon's own routes, without the catch-all that serves plugins."""
        if self._core_map is None:
            rules = [
                Rule(rule.rule, methods=rule.methods, endpoint=rule.endpoint)
                for rule in self.app.url_map.iter_rules()
                if rule.endpoint not in (_PLUGIN_ENDPOINT, "static")
            ]
            self._core_map = Map(rules)
        return self._core_map.bind("localhost")

    def guard(self, plugin: str, spec: APIEndpointSpec) -> str | None:
        """Why ``spec`` may not be mounted (some path would match both it and a core
        route, compared segment by segment, whatever the method), or None."""
        self._core()
        assert self._core_map is not None
        for rule in self._core_map.iter_rules():
            if not routes_overlap(spec.path, rule.rule):
                continue
            if spec.method in (rule.methods or ()):
                return (
                    f"{spec.method} {spec.path} would shadow the daemon's own route"
                    f" {spec.method} {rule.rule}"
                )
            methods = ", ".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
            return (
                f"{spec.method} {spec.path} overlaps the daemon's own route {rule.rule}"
                f" ({methods}); a plugin may not shadow a core route"
            )
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Every method some route (the daemon's or a plugin's) answers at ``path``, HEAD
        with GET; empty when no route has that path (a 405's ``Allow`` header: the
        answer to ``OPTIONS`` adds ``OPTIONS``)."""
        methods = {
            spec.method for _, spec in self.endpoints() if _compile(spec.path).fullmatch(path)
        }
        core = resource(path)
        if core is not None:
            methods |= core[1]
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        method = "GET" if method == "HEAD" else method
        allowed = []
        for plugin, spec in self.endpoints():
            found = _compile(spec.path).fullmatch(path)
            if found is None:
                continue
            if spec.method == method:
                return _Route(plugin, spec, found.re), found.groupdict()
            allowed.append(spec.method)
        if allowed or resource(path) is not None:
            raise method_not_allowed(method, path, self.allowed_methods(path))
        raise HTTPProblem(404, "Not found", f"no route {path}; see /openapi.json")

    def take(self, route: _Route, limit: RateLimit, who: str) -> tuple[float, int]:
        key = (route.plugin, route.spec.method, route.spec.path, who if limit.per_source else "")
        bucket = self._buckets.bucket(key, limit)
        return bucket.take(), bucket.remaining()


def method_not_allowed(method: str, path: str, allowed: list[str]) -> HTTPProblem:
    """The 405 for ``method`` at ``path``, its ``Allow`` header listing ``allowed``."""
    usable = [name for name in allowed if name not in ("HEAD", "OPTIONS")] or allowed
    return HTTPProblem(
        405,
        "Method not allowed",
        f"{method} is not allowed on {path}; use {', '.join(usable)}",
        headers={"Allow": ", ".join(allowed)},
    )


@blueprint.route("/<path:subpath>", methods=_METHODS, strict_slashes=False)
async def plugin_endpoint(subpath: str) -> Any:
    path = "/" + subpath
    endpoints: PluginEndpoints = current_app.extensions[PLUGIN_ENDPOINTS]
    route, params = endpoints.match(request.method, path)
    g.setdefault(PLUGIN_ROUTE, route.spec.path)  # the metrics' route label: the template
    spec = route.spec
    who = None
    if spec.protected or spec.permissions:
        who = await principal(*spec.permissions)
    headers: dict[str, str] = {}
    if spec.rate_limit is not None:
        caller = who.token_id if who is not None else _source(request.remote_addr)
        wait, remaining = endpoints.take(route, spec.rate_limit, caller)
        if wait:
            raise HTTPProblem(
                429,
                "Rate limited",
                f"{spec.method} {spec.path} is over its rate limit; retry after {wait:.3g}s",
                headers=rate_limit_headers(wait, spec.rate_limit),
                retry_after=wait,
            )
        headers = rate_limit_headers(0, spec.rate_limit, remaining)
        del headers["Retry-After"]
    body = await json_body(required=False) if request.method != "GET" else None
    api_request = APIRequest(
        request.method,
        path,
        query=dict(request.args),
        body=body,
        principal=who.name if who is not None else None,
        scopes=tuple(sorted(who.scopes)) if who is not None else (),
        path_params=params,
    )
    daemon = current_daemon()
    began = time.perf_counter()
    try:
        result = await daemon.host.call_api(route.plugin, spec, api_request, source=Source.HTTP)
    except (ActorError, PluginError) as exc:
        problem = from_error(exc, plugin=route.plugin)
        if isinstance(exc, PluginError):
            problem = HTTPProblem(502, "Plugin error", str(exc), plugin=route.plugin)
        raise problem from None
    finally:
        daemon.metrics.plugin_latency.labels(plugin=route.plugin, kind="api").observe(
            time.perf_counter() - began
        )
    return _response(result, headers)


def _source(address: str | None) -> str:
    """The source an anonymous caller's rate limit is counted against: its address, or
    ``loopback`` for any loopback address (one machine, however many addresses it picks
    in 127.0.0.0/8) unless ``loopback_is_one_source`` is off."""
    if not address:
        return ""
    if current_daemon().config.loopback_is_one_source:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # not an IP address (a Unix socket's path): itself
            return address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.2 is loopback too
        if ip.is_loopback:
            return "loopback"
    return address


def _response(result: APIResult, headers: dict[str, str]) -> Response:
    return Response(
        json.dumps(result.data),
        status=result.status,
        headers={**headers, **dict(result.headers)},
        content_type="application/json",
    )
