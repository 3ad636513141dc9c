"""One declaration per route: method, path, who may call it, its parameters (types and
bounds), its request body (JSON or multipart) and every answer it gives (status, content
type, schema). :func:`route` registers a declaration with Quart *and* records it for the
OpenAPI document (:mod:`api._http._openapi`), and the view it registers checks each
request against the same declaration before the handler runs: the bounds the document
shows are the bounds enforced, and a request outside them is a 400 problem naming the
field and what is expected (a path parameter outside its schema is a 404: no such
resource can exist).

A handler reads what was checked with :func:`query_value`, :func:`header_value` and
:func:`checked_body`.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
import jsonschema
from jsonschema import validators
from quart import Blueprint, g, request

from ._problems import HTTPProblem
from ._requests import (
    body_key_caller,
    current_daemon,
    json_body,
    open_events_or_token,
    open_or_token,
    principal,
)

Schema = dict[str, Any]
JSON = "application/json"
MULTIPART = "multipart/form-data"
OBJECT: Schema = {"type": "object"}
STRING: Schema = {"type": "string"}


class Access(enum.Enum):
    """Who may call a route (with :attr:`Route.scopes`, what a token must hold)."""

    OPEN = "open"
    """No token, ever (the dashboard page: it asks for one itself)."""
    HEALTH = "health"
    """Open on loopback while ``[daemon] open_health`` (the default); else a token."""
    READ = "read"
    """A token unless ``[daemon] open_reads`` (off by default)."""
    TOKEN = "token"
    """A valid token, holding every one of the route's scopes."""
    EVENTS = "events"
    """A token holding the route's scopes, unless ``[api] open_events`` and the caller is
    on loopback without a token (the event stream)."""
    BODY_KEY = "body_key"
    """A token holding the route's scopes: in the ``Authorization`` header, or, with
    ``[api] snoozebot_body_auth``, in the JSON body's ``api_key`` (Snoozebot's clients)."""


@attrs.frozen
class Param:
    """A query, path or header parameter: its value's JSON schema (``integer``,
    ``number`` and ``boolean`` values are converted from the text before they are
    checked)."""

    name: str
    schema: Schema
    description: str
    location: str = "query"
    required: bool = False
    converter: str = "string"
    """A path parameter's werkzeug converter: ``string`` (one segment) or ``path``."""


def query(name: str, schema: Schema, description: str, *, required: bool = False) -> Param:
    return Param(name, schema, description, "query", required)


def path(
    name: str, description: str, schema: Schema = STRING, *, converter: str = "string"
) -> Param:
    return Param(name, schema, description, "path", True, converter)


def header(name: str, schema: Schema, description: str) -> Param:
    """A request header the route reads (its value checked as text: ``string`` only)."""
    return Param(name, schema, description, "header")


@attrs.frozen
class Reply:
    """One answer a route gives: its status, content type and schema (None: no body)."""

    status: int
    description: str
    schema: Schema | None = OBJECT
    content_type: str = JSON
    headers: Mapping[str, str] = attrs.field(factory=dict)
    """Header name -> what it says."""


@attrs.frozen
class Body:
    """A request body: a JSON value or a multipart form (``schema`` describes its
    fields; files are ``{"type": "string", "contentMediaType": ...}``)."""

    schema: Schema
    content_type: str = JSON
    required: bool = True
    examples: tuple[Any, ...] = ()


@attrs.frozen
class Route:
    """A core route, declared once (see the module's docstring)."""

    method: str
    path: str
    """The OpenAPI template: ``/api/v1/plugins/{name}``."""
    summary: str
    replies: tuple[Reply, ...]
    access: Access = Access.READ
    scopes: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    body: Body | None = None
    problems: tuple[int, ...] = ()
    """The route's own error statuses (each a problem document); those every route can
    give (400, 401, 421, 500; 403 with scopes, 413 with a body, 405 with path parameters)
    are added."""

    @property
    def rule(self) -> str:
        """The werkzeug rule: ``/api/v1/plugins/<name>``."""
        converters = {p.name: p.converter for p in self.params if p.location == "path"}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            converter = converters.get(name, "string")
            return f"<{name}>" if converter == "string" else f"<{converter}:{name}>"

        return re.sub(r"\{([^}]+)\}", replace, self.path)

    def problem_statuses(self) -> list[int]:
        statuses = {400, 401, 421, 500, *self.problems}
        if "{" in self.path:
            statuses.add(405)  # a value that names another resource (plugins/install)
        if self.scopes:
            statuses.add(403)
        if self.body is not None:
            statuses.add(413)
        return sorted(statuses)


ROUTES: list[Route] = []
"""Every core route, as the blueprints declared them (the OpenAPI document's source)."""

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def route(blueprint: Blueprint, declaration: Route) -> Callable[[Handler], Handler]:
    """Register the decorated handler for ``declaration`` on ``blueprint``, checking
    every request against the declaration first, and record it in :data:`ROUTES`."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(**kwargs: Any) -> Any:
            _check_resource(declaration)
            await _authorize(declaration)
            _check_path(declaration, kwargs)
            g.cws_query = _check_query(declaration)
            g.cws_headers = _check_headers(declaration)
            body = declaration.body
            if body is not None and body.content_type == JSON:
                g.cws_body = await _check_json(declaration, body)
            return await handler(**kwargs)

        blueprint.add_url_rule(
            declaration.rule, view_func=checked, methods=[declaration.method.upper()]
        )
        ROUTES.append(declaration)
        return checked  # type: ignore[return-value]

    return decorate


def _template(route: Route) -> tuple[re.Pattern[str], tuple[int, int, int]]:
    """The regex a route's path template matches (a path parameter with an ``enum``
    matches only those values), and its specificity: static segments, then fewer
    ``path`` parameters, then segments."""
    params = {p.name: p for p in route.params if p.location == "path"}
    static = paths = 0
    regex = ""
    for segment in route.path.strip("/").split("/"):
        found = re.fullmatch(r"\{([^}]+)\}", segment)
        if found is None:
            static += 1
            regex += "/" + re.escape(segment)
            continue
        param = params.get(found.group(1))
        if param is not None and "enum" in param.schema:
            regex += "/(?:" + "|".join(re.escape(str(v)) for v in param.schema["enum"]) + ")"
        elif param is not None and param.converter == "path":
            paths += 1
            regex += "/[^/].*?"
        else:
            regex += "/[^/]+"
    if route.path.endswith("/") and route.path != "/":
        regex += "/"  # /api/plugins/ is not /api/plugins
    return re.compile(regex or "/"), (static, -paths, route.path.count("/"))


@functools.cache
def _templates() -> list[tuple[Route, re.Pattern[str], tuple[int, int, int]]]:
    return [(route, *_template(route)) for route in ROUTES]


@functools.lru_cache(maxsize=1024)
def resource(path: str) -> tuple[str, frozenset[str]] | None:
    """The core resource ``path`` belongs to: its template (the most specific that
    matches: ``/api/v1/plugins/discover`` before ``/api/v1/plugins/{name}``, as OpenAPI
    matches them) and the methods declared for it; None when no core route matches."""
    matches = [(rank, route) for route, regex, rank in _templates() if regex.fullmatch(path)]
    if not matches:
        return None
    best = max(rank for rank, _ in matches)
    template = next(route.path for rank, route in matches if rank == best)
    methods = frozenset(r.method.upper() for rank, r in matches if r.path == template)
    return template, methods


def query_value(name: str) -> Any:
    """The checked value of the query parameter ``name`` (its schema's default, or None,
    when it was not sent)."""
    values: dict[str, Any] = g.cws_query
    return values.get(name)


def header_value(name: str) -> str | None:
    """The checked value of the declared header ``name`` (None when it was not sent)."""
    values: dict[str, str | None] = g.cws_headers
    return values.get(name)


def checked_body() -> Any:
    """The request's JSON body, checked against its route's schema."""
    return g.cws_body


def _check_resource(declaration: Route) -> None:
    # werkzeug routes a method to a less specific rule when the most specific one lacks
    # it (DELETE /api/v1/plugins/discover to /api/v1/plugins/<name>); the document says
    # that path is the resource /api/v1/plugins/discover, which answers GET alone.
    found = resource(request.path)
    if found is not None and found[0] != declaration.path:
        allowed = sorted(found[1] | ({"HEAD"} if "GET" in found[1] else set()))
        raise HTTPProblem(
            405,
            "Method not allowed",
            f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(found[1]))}",
            headers={"Allow": ", ".join(allowed)},
        )


async def _authorize(declaration: Route) -> None:
    # The caller first: an anonymous body is refused before it is read (but where the
    # body holds the token: :func:`_check_json`).
    access = declaration.access
    if access is Access.HEALTH:
        await open_or_token()
    elif access is Access.TOKEN:
        await principal(*declaration.scopes)
    elif access is Access.EVENTS:
        await open_events_or_token(*declaration.scopes)
    elif access is Access.BODY_KEY and not current_daemon().config.snoozebot_body_auth:
        await principal(*declaration.scopes)


def _check_path(declaration: Route, values: Mapping[str, Any]) -> None:
    for param in declaration.params:
        if param.location != "path":
            continue
        problem = _violation(param.schema, values[param.name], f"the path parameter {param.name!r}")
        if problem is not None:
            raise HTTPProblem(404, "Not found", f"no route {request.path}: {problem}")


_INTEGER = re.compile(r"[+-]?\d{1,30}")
_BOOLEANS = {"true": True, "false": False}


def _check_query(declaration: Route) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in declaration.params:
        if param.location != "query":
            continue
        raw = request.args.get(param.name)
        if raw is None:
            if param.required:
                raise HTTPProblem(
                    400,
                    "Bad request",
                    f"the query parameter {param.name!r} is required: {param.description}",
                )
            values[param.name] = param.schema.get("default")
            continue
        value = _convert(param, raw)
        problem = _violation(param.schema, value, f"the query parameter {param.name!r}")
        if problem is not None:
            raise HTTPProblem(400, "Bad request", problem)
        values[param.name] = value
    return values


def _convert(param: Param, raw: str) -> Any:
    kind = param.schema.get("type")
    if kind == "integer":
        if _INTEGER.fullmatch(raw):
            return int(raw)
        expected = "an integer"
    elif kind == "number":
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
        expected = "a finite number"
    elif kind == "boolean":
        if raw in _BOOLEANS:
            return _BOOLEANS[raw]
        expected = "true or false"
    else:
        return raw
    raise HTTPProblem(
        400,
        "Bad request",
        f"the query parameter {param.name!r} must be {expected} ({_expected(param.schema)}),"
        f" got {raw[:80]!r}",
    )


def _check_headers(declaration: Route) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for param in declaration.params:
        if param.location != "header":
            continue
        raw = request.headers.get(param.name)
        if raw is not None and _violation(param.schema, raw, param.name) is not None:
            raise HTTPProblem(
                400,
                "Bad request",
                f"{param.name} must be {_expected(param.schema)}, got {raw[:80]!r}",
            )
        values[param.name] = raw
    return values


async def _check_json(declaration: Route, body: Body) -> Any:
    value = await json_body(required=body.required)
    if value is None:
        value = {}
    if declaration.access is Access.BODY_KEY and current_daemon().config.snoozebot_body_auth:
        # The caller is in the body (or the header): known before the body is judged.
        if not isinstance(value, dict):
            raise HTTPProblem(400, "Bad request", "the body must be a JSON object")
        await body_key_caller(value, *declaration.scopes)
    problem = _violation(body.schema, value, "the body")
    if problem is not None:
        raise HTTPProblem(400, "Bad request", problem)
    return value


# ---------------------------------------------------------------------- JSON Schema


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Schema
) -> Any:  # pragma: no cover - called by jsonschema
    """``pattern`` as JSON Schema reads it (ECMA-262): ``$`` ends the text, as it does for
    the clients that generate from the document (Python's ``$`` also matches before a
    final newline)."""
    if not validator.is_type(instance, "string"):
        return
    if not _ecma(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.lru_cache(maxsize=256)
def _ecma(pattern: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


_Validator = validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator, {"pattern": _pattern}
)


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    return _Validator(json.loads(schema_json))


_BOUNDS = {
    "maximum": "at most", "minimum": "at least",
    "exclusiveMaximum": "below", "exclusiveMinimum": "above",
}  # fmt: skip
_PYTHON_NAMES: dict[str, str] = {
    "string": "str", "integer": "int", "number": "float", "boolean": "bool",
    "array": "a JSON array", "object": "a JSON object", "null": "null",
}  # fmt: skip


def _violation(schema: Schema, value: Any, subject: str) -> str | None:
    """What is wrong with ``value`` (named ``subject``: "the body") by ``schema``, naming
    the field and what it expects; None when nothing is."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = ""
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else f"{'.' if where else ''}{part}"
    who = f"{where!r}" if where else subject
    rule = error.validator
    got = repr(error.instance)
    got = got if len(got) <= 80 else got[:77] + "..."
    if rule == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        text = f"{who} needs {missing[0] if missing else error.validator_value!r}"
    elif rule == "type":
        kinds = (
            error.validator_value
            if isinstance(error.validator_value, list)
            else [error.validator_value]
        )
        names = " or ".join(_PYTHON_NAMES.get(str(kind), str(kind)) for kind in kinds)
        text = f"{who} must be {names}, got {got}"
    elif rule in ("maxLength", "minLength") and isinstance(error.instance, str):
        text = f"{who} is {len(error.instance)} characters long"
    elif rule in ("maxItems", "minItems") and isinstance(error.instance, list):
        text = f"{who} has {len(error.instance)} items"
    elif rule in _BOUNDS:
        text = f"{who} is {_BOUNDS[rule]} {error.validator_value}, got {got}"
    elif "description" in error.schema or len(error.message) > 200:
        text = f"{who} is refused, got {got}"
    else:
        text = f"{who} is refused: {error.message}"
    expected = _expected(error.schema) if isinstance(error.schema, dict) else ""
    if expected and (rule != "type" or "description" in error.schema):
        text += f"; expected {expected}"
    return text[:600]


def _expected(schema: Schema) -> str:
    """A schema's bounds in words: its description, else its type and limits."""
    if "description" in schema:
        return str(schema["description"])
    parts = []
    if "type" in schema:
        parts.append(str(schema["type"]))
    if "enum" in schema:
        parts.append("one of " + ", ".join(map(json.dumps, schema["enum"])))
    for keyword, words in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
        ("minLength", "of at least {} characters"),
        ("maxLength", "of at most {} characters"),
        ("minItems", "with at least {} items"),
        ("maxItems", "with at most {} items"),
    ):
        if keyword in schema:
            bound = schema[keyword]
            parts.append(words.format(bound) if "{}" in words else f"{words} {bound}")
    if "required" in schema:
        parts.append("with " + ", ".join(map(repr, schema["required"])))
    return " ".join(parts)
