"""Health, readiness, metrics and the daemon's own facts: ``/healthz``, ``/readyz``,
``/metrics`` (open on loopback by default) and ``/api/v1/daemon``."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from quart import Blueprint, Response

from ._problems import HTTPProblem
from ._requests import current_daemon, open_or_token, principal

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> Any:
    await open_or_token()
    daemon = current_daemon()
    return {"status": "ok", "uptime_seconds": round(time.time() - daemon.started_at, 3)}


@blueprint.get("/readyz")
async def readyz() -> Any:
    await open_or_token()
    waiting = current_daemon().waiting_for()
    if waiting:
        raise HTTPProblem(503, "Not ready", "waiting for: " + "; ".join(waiting),
                          headers={"Retry-After": "1"}, waiting=waiting)  # fmt: skip
    return {"status": "ready"}


@blueprint.get("/metrics")
async def metrics() -> Any:
    await open_or_token()
    return Response(
        current_daemon().metrics.exposition(),
        content_type="text/plain; version=0.0.4; charset=utf-8",
    )


@blueprint.get("/api/v1/daemon")
async def daemon_info() -> Any:
    await principal()
    daemon = current_daemon()
    return {
        "version": importlib.metadata.version("cws-actors"),
        "url": daemon.url,
        "home": str(daemon.config.home),
        "config_source": daemon.config.source,
        "uptime_seconds": round(time.time() - daemon.started_at, 3),
        "reloads": daemon.reloads,
    }
