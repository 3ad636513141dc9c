"""The OpenAPI 3.1 document: the daemon's core routes plus the loaded plugins' routes."""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import attrs

from cws_actors import APIEndpointSpec

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_OBJECT: dict[str, Any] = {"type": "object"}


@attrs.frozen
class _Core:
    method: str
    path: str
    summary: str
    scope: str | None = None
    """None: open; "": any valid token; else the scope needed."""
    body: dict[str, Any] | None = None
    query: tuple[str, ...] = ()


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_STRING = {"type": "string"}
_CORE = [
    _Core(
        "get", "/api/v1/instances", "Instances of every cloud provider", query=("provider", "state")
    ),
    _Core("get", "/api/v1/instances/{provider}/{id}", "One instance"),
    _Core(
        "post",
        "/api/v1/instances/{provider}/{id}/{action}",
        "start or stop an instance",
        "instances:manage",
        _object([], wait={"type": "boolean"}, hibernate={"type": "boolean"}),
    ),
    _Core(
        "post",
        "/api/v1/faults",
        "Inject faults: target (path or glob), spec (compact text, object or list), id",
        "faults:inject",
        _object(["target", "spec"], target=_STRING, spec={}, id=_STRING)
        | {
            "examples": [
                {"target": "/plugins/aws", "spec": "crash:0.05 for 1m"},
                {
                    "target": "/plugins/*",
                    "spec": ["latency:10ms..50ms", {"kind": "drop", "probability": 0.01}],
                },
            ]
        },
    ),
    _Core(
        "get", "/api/v1/faults", "Active faults (all=true: finished ones too)", "", query=("all",)
    ),
    _Core("get", "/api/v1/faults/firings", "The latest firings of faults", ""),
    _Core("get", "/api/v1/faults/{id}", "One fault", ""),
    _Core("delete", "/api/v1/faults/{id}", "Clear one fault", "faults:inject"),
    _Core(
        "delete",
        "/api/v1/faults",
        "Clear all faults, or those of a target",
        "faults:inject",
        query=("target",),
    ),
    _Core(
        "post",
        "/api/v1/chaos",
        "Start a chaos run: faults, target, duration, seed, rate, ask_timeout, settle",
        "faults:inject",
        _object(
            ["faults"],
            faults={},
            target=_STRING,
            duration={},
            seed={"type": "integer"},
            rate={"type": "number"},
            ask_timeout={},
            settle={},
        )
        | {
            "examples": [
                {
                    "faults": "crash:0.05,latency:10ms..50ms",
                    "target": "/plugins/*",
                    "duration": "60s",
                    "seed": 42,
                    "rate": 20,
                },
            ]
        },
    ),
    _Core("get", "/api/v1/chaos", "Chaos runs, the latest last", ""),
    _Core("get", "/api/v1/chaos/{id}", "A chaos run: progress, then its report", ""),
    _Core("delete", "/api/v1/chaos/{id}", "End a chaos run early", "faults:inject"),
    _Core("get", "/healthz", "Liveness of the daemon"),
    _Core("get", "/readyz", "Readiness of the daemon"),
    _Core("get", "/metrics", "Prometheus metrics"),
    _Core("get", "/openapi.json", "This document"),
    _Core("get", "/api/v1/daemon", "The daemon's version, URL and configuration source", ""),
    _Core("get", "/api/v1/plugins", "Every discovered plugin and its status"),
    _Core("get", "/api/v1/plugins/discover", "Scan the plugin sources again"),
    _Core("get", "/api/v1/plugins/{name}", "One plugin: status, history, its own status"),
    _Core(
        "post",
        "/api/v1/plugins/{name}/{operation}",
        "load, unload, enable, disable, reload; update (multipart: archive, signature,"
        " grant, allow_downgrade); grant or revoke (JSON: grants, a list or a"
        " comma-separated string; granting secrets or all needs admin, apis:SCOPE needs"
        " SCOPE)",
        "plugins:manage",
    ),
    _Core(
        "post",
        "/api/v1/plugins/install",
        "Install a .cwsplugin archive (multipart: archive, signature, grant: what its"
        " sandbox is granted, comma-separated); 409 with `ungranted` when it asks for more",
        "plugins:manage",
    ),
    _Core("get", "/api/v1/secrets", "The secrets' names (never their values)", "admin"),
    _Core(
        "put",
        "/api/v1/secrets/{name}",
        "Set a secret for the plugins granted it (201 new, 200 replaced)",
        "admin",
        _object(["value"], value=_STRING),
    ),
    _Core("delete", "/api/v1/secrets/{name}", "Forget a secret", "admin"),
    _Core(
        "delete",
        "/api/v1/plugins/{name}",
        "Remove a user plugin",
        "plugins:manage",
        query=("purge_data",),
    ),
    _Core("get", "/api/plugins", "Snoozebot: loaded plugins"),
    _Core("get", "/api/plugins/discover", "Snoozebot: discovered plugins"),
    _Core("get", "/api/plugins/{name}", "Snoozebot: one plugin"),
    _Core(
        "post",
        "/api/plugins/load",
        "Snoozebot: load a plugin",
        "plugins:manage",
        _object(
            ["plugin_name"],
            plugin_name=_STRING,
            api_key=_STRING,
            timeout_seconds={"type": "integer", "maximum": 3600},  # <= 0: 30
            retries={"type": "integer", "maximum": 100},  # tries in all; <= 0: 1
        ),
    ),
    _Core(
        "post",
        "/api/plugins/unload",
        "Snoozebot: unload a plugin",
        "plugins:manage",
        _object(["plugin_name"], plugin_name=_STRING, api_key=_STRING, force={"type": "boolean"}),
    ),
    _Core("get", "/api/v1/actors", "The actor tree"),
    _Core("get", "/api/v1/actors/{path}", "One actor or subtree"),
    _Core("post", "/api/v1/actors/{path}/restart", "Restart an actor", "admin"),
    _Core("post", "/api/v1/actors/{path}/clear-quarantine", "Start it again", "admin"),
    _Core("get", "/api/v1/dead-letters", "Recent dead letters", query=("limit",)),
    _Core(
        "post",
        "/api/v1/events",
        "Publish an event",
        "events:publish",
        _object(["topic"], topic=_STRING, payload={}),
    ),
    _Core(
        "get",
        "/api/v1/events/stream",
        "Server-Sent Events (Last-Event-ID replays what was missed)",
        "events:read",
        query=("topics",),
    ),
    _Core("get", "/api/v1/cli/commands", "Every plugin CLI command's spec"),
    _Core(
        "post",
        "/api/v1/cli/execute",
        "Run a plugin CLI command",
        "",
        _object(["args"], args={"type": "array", "items": _STRING, "minItems": 1}),
    ),
]


def _parameters(path: str, query: tuple[str, ...]) -> list[dict[str, Any]]:
    names = re.findall(r"\{([^}]+)\}", path)
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in names
    ]
    params += [{"name": name, "in": "query", "schema": {"type": "string"}} for name in query]
    return params


def _operation(
    summary: str, scope: str | None, body: dict[str, Any] | None, params: list[dict[str, Any]]
) -> dict[str, Any]:
    ok = {"description": "OK", "content": {"application/json": {"schema": _OBJECT}}}
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok, "default": _PROBLEM}}
    if params:
        operation["parameters"] = params
    if scope is not None:
        operation["security"] = [{"bearer": [scope] if scope else []}]
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def openapi_document(plugins: list[tuple[str, APIEndpointSpec]]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for core in _CORE:
        paths.setdefault(core.path, {})[core.method] = _operation(
            core.summary, core.scope, core.body, _parameters(core.path, core.query)
        )
    for plugin, spec in plugins:
        scope = " ".join(spec.permissions) if spec.permissions else ("" if spec.protected else None)
        operation = _operation(f"{plugin}: {spec.handler}", scope, None, _parameters(spec.path, ()))
        operation["tags"] = [f"plugin:{plugin}"]
        paths.setdefault(spec.path, {})[spec.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cws-actors daemon",
            "version": importlib.metadata.version("cws-actors"),
            "description": "Plugins as supervised actors: manage them, watch them, call them.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "An error (RFC 9457)",
                    "content": {
                        "application/problem+json": {
                            "schema": {
                                "type": "object",
                                "required": ["type", "title", "status", "detail"],
                                "properties": {
                                    "type": {"type": "string"},
                                    "title": {"type": "string"},
                                    "status": {"type": "integer"},
                                    "detail": {"type": "string"},
                                },
                            }
                        }
                    },
                }
            },
        },
    }
