"""Health, readiness, metrics and the daemon's own facts: ``/healthz``, ``/readyz``,
``/metrics`` (open on loopback by default) and ``/api/v1/daemon``."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from quart import Blueprint, Response

from ._problems import HTTPProblem
from ._requests import current_daemon
from ._routes import Access, Reply, Route, route
from ._shapes import INTEGER, NUMBER, STRING, nullable, obj

blueprint = Blueprint("health", __name__)

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text exposition format."""


@route(blueprint, Route(
    "get", "/healthz", "Liveness of the daemon",
    (Reply(200, "Alive", obj(["status", "uptime_seconds"], status={"const": "ok"},
                              uptime_seconds=NUMBER)),),
    Access.HEALTH,
))  # fmt: skip
async def healthz() -> Any:
    daemon = current_daemon()
    return {"status": "ok", "uptime_seconds": round(time.time() - daemon.started_at, 3)}


@route(blueprint, Route(
    "get", "/readyz", "Readiness of the daemon: 503 naming what it still waits for",
    (Reply(200, "Ready", obj(["status"], status={"const": "ready"})),),
    Access.HEALTH,
    problems=(503,),
))  # fmt: skip
async def readyz() -> Any:
    waiting = current_daemon().waiting_for()
    if waiting:
        raise HTTPProblem(503, "Not ready", "waiting for: " + "; ".join(waiting),
                          headers={"Retry-After": "1"}, waiting=waiting)  # fmt: skip
    return {"status": "ready"}


@route(blueprint, Route(
    "get", "/metrics", "Prometheus metrics (text exposition format 0.0.4)",
    (Reply(200, "The metrics", {"type": "string"}, METRICS_TYPE),),
    Access.HEALTH,
))  # fmt: skip
async def metrics() -> Any:
    return Response(current_daemon().metrics.exposition(), content_type=METRICS_TYPE)


@route(blueprint, Route(
    "get", "/api/v1/daemon", "The daemon's version, URL and configuration source",
    (Reply(200, "The daemon", obj(
        ["version", "url", "home", "config_source", "uptime_seconds", "reloads"],
        version=STRING, url=nullable("string"), home=STRING, config_source=STRING,
        uptime_seconds=NUMBER, reloads=INTEGER,
    )),),
    Access.TOKEN,
))  # fmt: skip
async def daemon_info() -> Any:
    daemon = current_daemon()
    return {
        "version": importlib.metadata.version("cws-actors"),
        "url": daemon.url,
        "home": str(daemon.config.home),
        "config_source": daemon.config.source,
        "uptime_seconds": round(time.time() - daemon.started_at, 3),
        "reloads": daemon.reloads,
    }
