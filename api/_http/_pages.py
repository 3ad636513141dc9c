"""The documents: the live dashboard at ``/`` and the OpenAPI document at
``/openapi.json`` (the core routes plus the loaded plugins' routes)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from ._openapi import openapi_document
from ._requests import current_daemon

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
async def dashboard() -> Any:
    from ._dashboard import dashboard_page

    return Response(dashboard_page(), content_type="text/html; charset=utf-8")


@blueprint.get("/openapi.json")
async def openapi() -> Any:
    return openapi_document(current_daemon().host.api_endpoints())
