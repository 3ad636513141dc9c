"""``/api/v1/instances``: the cloud-provider plugins' instances, through the router.

A provider plugin declares the ``cloud-provider`` service type; its name is the
provider's name in these routes (``aws``, ``gcp``)."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint

from cws_actors import ActorError, HandlerFailed, PluginError

from .._daemon import SERVICE_TYPE
from ._problems import HTTPProblem, from_error
from ._requests import current_daemon
from ._routes import Access, Body, Reply, Route, checked_body, path, query, query_value, route
from ._shapes import BOOLEAN, INTEGER, OBJECT_SCHEMA, STRING, array, obj

blueprint = Blueprint("instances", __name__)

_PROVIDER = path("provider", "the cloud provider plugin's name (aws, gcp)")
_ID = path(
    "id",
    "the instance's id (GCP's are ZONE/NAME)",
    {"type": "string", "pattern": "^[A-Za-z0-9_.:-]+(?:/[A-Za-z0-9_.:-]+)*$"},
    converter="path",
)
_ERRORS = (400, 404, 409, 429, 502, 503, 504)

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


@route(blueprint, Route(
    "get", "/api/v1/instances", "Instances of every cloud provider (or of one)",
    (Reply(200, "The instances, and each failing provider's error", obj(
        ["instances", "count", "providers", "errors"],
        instances=array(OBJECT_SCHEMA), count=INTEGER, providers=array(STRING),
        errors=OBJECT_SCHEMA,
    )),),
    params=(
        query("provider", {"type": "string"}, "only this provider's instances"),
        query("state", {"type": "string"}, "only instances in this state (running...)"),
    ),
    problems=(404,),
))  # fmt: skip
async def list_instances() -> Any:
    filters: dict[str, Any] = {}
    state = query_value("state")
    if state:
        filters["state"] = state
    instances: list[Any] = []
    errors: dict[str, Any] = {}

    async def one(provider: str) -> None:
        try:
            instances.extend(await call(provider, "list_instances", {"filters": filters or None}))
        except HTTPProblem as problem:
            errors[provider] = {"status": problem.status, "detail": problem.detail}

    asked = providers(query_value("provider"))
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


@route(blueprint, Route(
    "get", "/api/v1/instances/{provider}/{id}", "One instance",
    (Reply(200, "The instance", OBJECT_SCHEMA),),
    params=(_PROVIDER, _ID), problems=_ERRORS,
))  # fmt: skip
async def get_instance(provider: str, id: str) -> Any:
    instance_id = id
    (name,) = providers(provider)
    return await call(name, "get_instance", {"id": instance_id})


@route(blueprint, Route(
    "post", "/api/v1/instances/{provider}/{id}/{action}", "Start or stop an instance",
    (Reply(200, "The instance", OBJECT_SCHEMA),),
    Access.TOKEN, ("instances:manage",),
    params=(_PROVIDER, _ID, path("action", "start or stop",
                                 {"type": "string", "enum": ["start", "stop"]})),
    body=Body(obj(wait=BOOLEAN, hibernate=BOOLEAN), required=False),
    problems=_ERRORS,
))  # fmt: skip
async def act(provider: str, id: str, action: str) -> Any:
    instance_id = id
    body = checked_body()
    (name,) = providers(provider)
    payload = {"id": instance_id, "wait": bool(body.get("wait")),
               "hibernate": bool(body.get("hibernate"))}  # fmt: skip
    return await call(name, f"{action}_instance", payload)
