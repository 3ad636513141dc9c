"""Errors as RFC 9457 problem details (``application/problem+json``), and the
translation of the runtime's and the host's typed errors into them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from quart import Response

from cws_actors import (
    ActorError,
    ActorNotFound,
    ActorQuarantined,
    ActorRestarting,
    ActorStopped,
    AskTimeout,
    DeadlineExceeded,
    HandlerFailed,
    MailboxFull,
    NotReady,
    PluginError,
    PluginNotFound,
    PluginRefused,
    RateLimited,
    SandboxNotGranted,
)

PROBLEM_TYPE = "application/problem+json"


class HTTPProblem(Exception):
    """Raise inside a route to answer with a problem response."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(problem: HTTPProblem) -> Response:
    slug = problem.title.lower().replace(" ", "-")
    body = {
        "type": f"/problems/{slug}",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    headers = dict(problem.headers)
    if problem.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="cws"')
    if problem.status == 413:
        headers["Connection"] = "close"  # the unread rest of the body must not be parsed
    return Response(json.dumps(body), status=problem.status, headers=headers,
                    content_type=PROBLEM_TYPE)  # fmt: skip


def rate_limit_headers(retry_after: float, policy: Any, remaining: int = 0) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and the IETF ``RateLimit-Policy`` and
    ``RateLimit`` headers."""
    seconds = max(1, math.ceil(retry_after))
    headers = {"Retry-After": str(seconds)}
    if policy is not None and hasattr(policy, "header"):
        headers["RateLimit-Policy"] = f'"default";q={policy.burst};w={policy.burst / policy.rate:g}'
        headers["RateLimit"] = f'"default";r={remaining};t={seconds}'
    return headers


def from_error(error: Exception, *, plugin: str | None = None) -> HTTPProblem:
    """The problem for one of the runtime's or the host's errors."""
    who = f"plugin {plugin!r}" if plugin else "the target"
    if isinstance(error, RateLimited):
        return HTTPProblem(
            429,
            "Rate limited",
            f"{who} is over its rate limit; retry after {error.retry_after:.3g}s",
            headers=rate_limit_headers(error.retry_after, error.policy),
            retry_after=error.retry_after,
        )
    if isinstance(error, NotReady):
        return HTTPProblem(
            503,
            "Not ready",
            f"{who} is not ready (its readiness probe fails)",
            headers={"Retry-After": str(max(1, math.ceil(error.retry_after)))},
        )
    if isinstance(error, ActorRestarting | MailboxFull):
        return HTTPProblem(503, "Unavailable", f"{who}: {error}", headers={"Retry-After": "1"})
    if isinstance(error, AskTimeout | DeadlineExceeded):
        return HTTPProblem(504, "Timed out", f"{who} did not answer in time: {error}")
    if isinstance(error, HandlerFailed):
        cause = error.__cause__ or error
        return HTTPProblem(
            502,
            "Plugin error",
            f"{who} failed: {type(cause).__name__}: {cause}",
            plugin=plugin,
        )
    if isinstance(error, ActorNotFound | PluginNotFound):
        return HTTPProblem(404, "Not found", str(error))
    if isinstance(error, ActorQuarantined):
        return HTTPProblem(
            503,
            "Quarantined",
            f"{who} is quarantined after exhausting its restart budget; once its cause is"
            f" fixed, POST /api/v1/actors{error.path}/clear-quarantine starts it again",
        )
    if isinstance(error, ActorStopped):
        return HTTPProblem(503, "Unavailable", f"{who} is stopped", headers={"Retry-After": "1"})
    if isinstance(error, SandboxNotGranted):
        return HTTPProblem(
            409, "Refused", str(error), plugin=error.name, reason=error.reason,
            ungranted=list(error.ungranted), requests=list(error.requests),
        )  # fmt: skip
    if isinstance(error, PluginRefused):
        return HTTPProblem(409, "Refused", str(error), plugin=error.name, reason=error.reason)
    if isinstance(error, PluginError | ActorError):
        return HTTPProblem(409, "Conflict", str(error))
    raise error
