"""The documents: the live dashboard at ``/`` and the OpenAPI document at
``/openapi.json`` (the core routes plus the loaded plugins' routes)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from ._openapi import openapi_document
from ._requests import current_daemon
from ._routes import Access, Reply, Route, route
from ._shapes import obj

blueprint = Blueprint("pages", __name__)


@route(blueprint, Route(
    "get", "/", "The live dashboard (an HTML page; it asks for a token)",
    (Reply(200, "The page", {"type": "string"}, "text/html"),),
    Access.OPEN,
))  # fmt: skip
async def dashboard() -> Any:
    from ._dashboard import dashboard_page

    return Response(dashboard_page(), content_type="text/html; charset=utf-8")


@route(blueprint, Route(
    "get", "/openapi.json", "This document (OpenAPI 3.1), generated from the route table",
    (Reply(200, "The document", obj(["openapi", "info", "paths"])),),
))  # fmt: skip
async def openapi() -> Any:
    daemon = current_daemon()
    return openapi_document(daemon.config, daemon.host.api_endpoints())
