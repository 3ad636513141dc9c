"""schemathesis hooks for ``st run`` against a test daemon (``tests/api/schemathesis.toml``
names this module): generated faults and chaos runs are aimed under ``/sandbox``, where
no actor lives, so that a generated ``hang`` on ``/**`` does not rightly turn every later
plugin call into a 504. A target that is not a path is sent as generated, for the daemon
to refuse."""

from __future__ import annotations

from typing import Any

import schemathesis

SANDBOX = "/sandbox"
SANDBOXED = {("POST", "/api/v1/faults"), ("POST", "/api/v1/chaos")}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    body = case.body
    if (case.method.upper(), case.path) not in SANDBOXED or not isinstance(body, dict):
        return
    target = body.get("target")
    if isinstance(target, str) and target.startswith("/"):
        case.body = {**body, "target": SANDBOX + target}
    elif "target" not in body and case.path == "/api/v1/chaos":  # the default: /plugins/*
        case.body = {**body, "target": SANDBOX + "/*"}
