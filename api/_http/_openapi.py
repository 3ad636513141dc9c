"""The OpenAPI 3.1 document, generated from the route table the app serves: the core
routes' declarations (:data:`api._http._routes.ROUTES`, the same records that register
them with Quart and check their requests) and the loaded plugins' endpoint specs.

Who may call a route depends on the daemon's configuration (``open_reads``,
``open_health``), so the document is made for the daemon that serves it."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from cws_actors import APIEndpointSpec

from .._config import DaemonConfig
from ._problems import PROBLEM_TYPE
from ._routes import JSON, MULTIPART, ROUTES, Access, Param, Reply, Route
from ._shapes import COMPONENTS

_BEARER = "bearer"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
"""RFC 9457: every error answer (more members may follow: ``waiting``, ``plugin``...)."""

_PROBLEM_HEADERS = {
    401: {"WWW-Authenticate": 'Bearer realm="cws"'},
    405: {"Allow": "the methods the resource answers"},
    429: {"Retry-After": "whole seconds to wait"},
    503: {"Retry-After": "whole seconds to wait"},
}
_PLUGIN_PROBLEMS = (400, 401, 404, 413, 421, 429, 500, 502, 503, 504)
"""What the daemon itself may answer on a plugin's route (the plugin answers the rest);
404 once the plugin is unloaded."""


def _security(config: DaemonConfig, access: Access, scopes: tuple[str, ...]) -> Any:
    """The operation's ``security``, or None when it needs no token."""
    needs_token = (
        access is Access.TOKEN
        or (access is Access.READ and not config.open_reads)
        or (access is Access.HEALTH and not config.open_health)
    )
    if needs_token:
        return [{_BEARER: list(scopes)}]
    # A token, or none: the stream with open_events (on loopback), Snoozebot's load and
    # unload with snoozebot_body_auth (the body's api_key: OpenAPI has no scheme for it).
    optional = (access is Access.EVENTS and config.open_events) or (
        access is Access.BODY_KEY and config.snoozebot_body_auth
    )
    if access in (Access.EVENTS, Access.BODY_KEY):
        return [{_BEARER: list(scopes)}, {}] if optional else [{_BEARER: list(scopes)}]
    return None


def _parameter(param: Param) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": param.name,
        "in": param.location,
        "required": param.required or param.location == "path",
        "description": param.description,
        "schema": param.schema,
    }
    return parameter


def _reply(reply: Reply) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        answer["content"] = {reply.content_type: {"schema": reply.schema}}
    if reply.headers:
        answer["headers"] = _headers(reply.headers)
    return answer


def _headers(headers: Mapping[str, str]) -> dict[str, Any]:
    return {
        name: {"description": what, "schema": {"type": "string"}} for name, what in headers.items()
    }


def _problem(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": f"{HTTPStatus(status).phrase} (a problem document)",
        "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in _PROBLEM_HEADERS:
        answer["headers"] = _headers(_PROBLEM_HEADERS[status])
    return answer


def _operation(config: DaemonConfig, route: Route) -> dict[str, Any]:
    responses = {str(reply.status): _reply(reply) for reply in route.replies}
    for status in route.problem_statuses():
        responses.setdefault(str(status), _problem(status))
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route.method, route.path),
        "responses": dict(sorted(responses.items())),
    }
    if route.params:
        operation["parameters"] = [_parameter(param) for param in route.params]
    security = _security(config, route.access, route.scopes)
    if security is not None:
        operation["security"] = security
    if route.body is not None:
        media: dict[str, Any] = {"schema": route.body.schema}
        if route.body.examples:
            media["examples"] = {
                f"example{n}": {"value": value} for n, value in enumerate(route.body.examples, 1)
            }
        if route.body.content_type == MULTIPART:
            # Files: the daemon reads their bytes whatever content type a part declares.
            media["encoding"] = {
                name: {"contentType": "application/octet-stream"}
                for name, field in route.body.schema.get("properties", {}).items()
                if field.get("format") == "binary"
            }
        operation["requestBody"] = {
            "required": route.body.required,
            "content": {route.body.content_type: media},
        }
    return operation


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    if path.endswith("/") and words:
        words += "_slash"  # /api/plugins/ is not /api/plugins
    return f"{method.lower()}_{words or 'root'}"


def _plugin_operation(config: DaemonConfig, plugin: str, spec: APIEndpointSpec) -> dict[str, Any]:
    access = Access.TOKEN if spec.protected or spec.permissions else Access.READ
    responses: dict[str, Any] = {
        str(status): _problem(status)
        for status in sorted({*_PLUGIN_PROBLEMS, *((403,) if spec.permissions else ())})
    }
    # The plugin chooses its answer's status and JSON; the daemon knows no more of it.
    responses["default"] = {
        "description": f"The answer of plugin {plugin!r} (JSON; its status is the plugin's)",
        "content": {JSON: {"schema": {}}},
    }
    operation: dict[str, Any] = {
        "summary": f"{plugin}: {spec.handler}",
        "operationId": f"plugin_{plugin}_" + _operation_id(spec.method, spec.path),
        "tags": [f"plugin:{plugin}"],
        "responses": responses,
    }
    security = _security(config, access, spec.permissions)
    if security is not None:
        operation["security"] = security
    names = re.findall(r"\{([^}]+)\}", spec.path)
    if names:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in names
        ]
    if spec.method != "GET":
        operation["requestBody"] = {"required": False, "content": {JSON: {"schema": {}}}}
    return operation


def openapi_document(
    config: DaemonConfig, plugins: list[tuple[str, APIEndpointSpec]]
) -> dict[str, Any]:
    """The document for a daemon configured by ``config`` serving ``plugins``' routes."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(config, route)
    for plugin, spec in plugins:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _plugin_operation(
            config, plugin, spec
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cws-actors daemon",
            "version": importlib.metadata.version("cws-actors"),
            "description": "Plugins as supervised actors: manage them, watch them, call them."
            " Generated from the daemon's route table: every route, its parameters and"
            " bounds (the ones enforced), its body, and every answer it gives.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {_BEARER: {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": PROBLEM_SCHEMA, **COMPONENTS},
        },
    }
