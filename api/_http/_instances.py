"""``/api/v1/instances``: the cloud-provider plugins' instances, through the router.

A provider plugin declares the ``cloud-provider`` service type; its name is the
provider's name in these routes (``aws``, ``gcp``)."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, request

from cws_actors import ActorError, HandlerFailed, PluginError

from .._daemon import SERVICE_TYPE
from ._problems import HTTPProblem, from_error
from ._requests import current_daemon, json_body, principal

blueprint = Blueprint("instances", __name__)

# A provider error's type name (in process: the class; in a subprocess: its name) -> HTTP.
_STATUS = {
    "InstanceNotFound": (404, "Not found"),
    "ProviderRequestError": (400, "Bad request"),
    "ProviderAuthError": (502, "Provider refused"),
    "ProviderThrottled": (503, "Provider throttled"),
    "ProviderUnavailable": (503, "Provider unavailable"),
    "CircuitOpen": (503, "Provider unavailable"),
    "ProviderNotConfigured": (503, "Provider not configured"),
}


def about(provider: str, message: str) -> str:
    """``message`` led by the provider's name, once: the providers' own messages already
    start with it (``aws: ...``), and a detail must not read ``aws: aws: ...``."""
    return message if message.startswith(f"{provider}: ") else f"{provider}: {message}"


def provider_problem(error: Exception, provider: str) -> HTTPProblem:
    if isinstance(error, HandlerFailed):
        cause = error.__cause__ or error
        error_type = getattr(cause, "error_type", None)
        kind = (error_type or type(cause).__name__).rpartition(".")[2]
        if kind in _STATUS:
            status, title = _STATUS[kind]
            # A subprocess's error reads "plugin 'aws' raised TYPE: MESSAGE": keep MESSAGE.
            message = str(cause).partition(f"{error_type}: ")[2] if error_type else str(cause)
            headers = {"Retry-After": "5"} if status == 503 else None
            return HTTPProblem(status, title, about(provider, message), headers=headers,
                               provider=provider)  # fmt: skip
    return from_error(error, plugin=provider)


def providers(wanted: str | None = None) -> list[str]:
    host = current_daemon().host
    names = host.providers_of(SERVICE_TYPE)
    if wanted is not None:
        if wanted not in names:
            loaded = ", ".join(names) or "none"
            raise HTTPProblem(404, "Not found", f"no cloud provider {wanted!r}; loaded: {loaded}")
        return [wanted]
    return names


async def call(provider: str, handler: str, payload: Any) -> Any:
    host = current_daemon().host
    try:
        result = await host.call_service(provider, handler, payload, timeout=120)
    except (ActorError, PluginError) as exc:
        raise provider_problem(exc, provider) from None
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        error = result["error"]
        status, title = _STATUS.get(str(error.get("type")), (502, "Provider error"))
        headers = {"Retry-After": "5"} if status == 503 else None
        raise HTTPProblem(status, title, about(provider, str(error.get("message"))),
                          headers=headers, provider=provider)  # fmt: skip
    return result


@blueprint.get("/api/v1/instances")
async def list_instances() -> Any:
    filters: dict[str, Any] = {}
    state = request.args.get("state")
    if state:
        filters["state"] = state
    instances: list[Any] = []
    errors: dict[str, Any] = {}

    async def one(provider: str) -> None:
        try:
            instances.extend(await call(provider, "list_instances", {"filters": filters or None}))
        except HTTPProblem as problem:
            errors[provider] = {"status": problem.status, "detail": problem.detail}

    asked = providers(request.args.get("provider"))
    async with trio.open_nursery() as nursery:
        for provider in asked:
            nursery.start_soon(one, provider)
    if state:
        instances = [i for i in instances if i.get("state") == state]
    instances.sort(key=lambda i: (i.get("provider", ""), i.get("id", "")))
    # ``providers``: the ones asked, so that a client tells "every one failed" (each
    # in ``errors``, its detail led by its name) from "none has instances".
    return {"instances": instances, "count": len(instances), "providers": asked,
            "errors": errors}  # fmt: skip


@blueprint.get("/api/v1/instances/<provider>/<path:instance_id>")  # GCP ids are zone/name
async def get_instance(provider: str, instance_id: str) -> Any:
    (name,) = providers(provider)
    return await call(name, "get_instance", {"id": instance_id})


@blueprint.post("/api/v1/instances/<provider>/<path:instance_id>/<action>")
async def act(provider: str, instance_id: str, action: str) -> Any:
    await principal("instances:manage")
    if action not in ("start", "stop"):
        raise HTTPProblem(404, "Not found", f"unknown action {action!r}; expected start or stop")
    body = await json_body(required=False) or {}
    if not isinstance(body, dict):
        raise HTTPProblem(400, "Bad request", "the body must be a JSON object")
    (name,) = providers(provider)
    payload = {"id": instance_id, "wait": bool(body.get("wait")),
               "hibernate": bool(body.get("hibernate"))}  # fmt: skip
    return await call(name, f"{action}_instance", payload)
