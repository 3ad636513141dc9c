"""JSON schemas of what the routes take and answer, for their declarations
(:mod:`api._http._routes`). Each describes the shape :mod:`api._http._views` and the
route modules build; a key that is always present is ``required``."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def obj(required: list[str] | tuple[str, ...] = (), **properties: Any) -> Schema:
    """An object with ``properties``, of which ``required`` are always present."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def array(items: Schema, **bounds: Any) -> Schema:
    return {"type": "array", "items": items, **bounds}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
ANY: Schema = {}
OBJECT_SCHEMA: Schema = {"type": "object"}

SANDBOX = obj(
    ["requests", "granted", "ungranted", "stored", "defaults", "entry_point"],
    requests=array(STRING), granted=array(STRING), ungranted=array(STRING),
    stored=array(STRING), defaults=array(STRING), entry_point=BOOLEAN,
    controls={"type": ["object", "null"], "additionalProperties": STRING},
)  # fmt: skip
"""What a plugin's sandbox asks for (``requests``) and the operator's answer:
``granted`` and ``ungranted`` split the requests; ``stored`` is what was granted it
(install ``grant``, ``POST .../grant``), ``defaults`` what ``[plugins] default_grants``
grants it; ``entry_point``: granted what it asks for because pip installed it;
``controls``: for a subprocess plugin, each control of its sandbox and whether this
machine enforces it (``enforced``, ``partially enforced (why)``, ``not available
(why)``), null for a plugin that runs in the daemon."""

PLUGIN = obj(
    ["name", "version", "source", "isolation", "enabled", "loaded", "state", "ready",
     "restarts", "capabilities", "sandbox"],
    name=STRING, version=STRING, source=STRING, isolation=STRING, enabled=BOOLEAN,
    loaded=BOOLEAN, state=STRING, ready=BOOLEAN, restarts=INTEGER,
    last_exit=nullable("string"), calls=INTEGER, errors=INTEGER, events=INTEGER,
    published=INTEGER, last_error=nullable("string"), problem=nullable("string"),
    path=nullable("string"), pid=nullable("integer"), last_restart_at=nullable("string"),
    spare_pid=nullable("integer"),
    capabilities=obj(
        ["cli_commands", "api_endpoints", "event_handlers"],
        cli_commands=array(STRING), api_endpoints=array(STRING), event_handlers=array(STRING),
    ),
    history=array(obj(["at", "event"], at=NUMBER, event=STRING, detail=ANY)),
    plugin_status=ANY,
    sandbox=SANDBOX,
)  # fmt: skip
"""``plugin_view``: one plugin's status (``GET /api/v1/plugins/{name}`` adds its history
and its own status while it is loaded)."""

DISCOVERY = obj(
    ["plugins", "count", "directory"],
    plugins=array(
        obj(
            ["name", "version", "source", "isolation", "loaded"],
            name=STRING, version=STRING, source=STRING, location=nullable("string"),
            isolation=STRING, loaded=BOOLEAN, problem=nullable("string"),
        )
    ),
    count=INTEGER,
    directory=STRING,
)  # fmt: skip

ACTOR = obj(
    ["path", "kind", "state", "ready", "restarts", "probes"],
    path=STRING, kind=STRING, state=STRING, ready=BOOLEAN, restarts=INTEGER,
    last_exit=nullable("string"), last_restart_at=nullable("string"),
    probes=array(obj(["kind", "passing"], kind=STRING, passing=BOOLEAN)),
    mailbox=nullable("object"), children=array(ref("Actor")),
    handling={**INTEGER, "minimum": 0, "description": "messages being handled now (actors)"},
    max_concurrency={**INTEGER, "minimum": 1,
                     "description": "messages the actor handles at once (actors)"},
)  # fmt: skip
"""``actor_view``: an actor (with ``handling`` and ``max_concurrency``), and a
supervisor's children (recursive)."""

DEAD_LETTER = obj(
    ["envelope_id", "source", "target", "reason", "at"],
    envelope_id=ANY, source=STRING, target=ANY, reason=STRING, detail=ANY, at=NUMBER,
    time=NUMBER, correlation_id=ANY, payload=STRING, topic=nullable("string"),
)  # fmt: skip

EVENT = obj(
    ["id", "topic", "source", "durable"],
    id=INTEGER, topic=STRING, payload=ANY, source=nullable("string"), durable=BOOLEAN,
)  # fmt: skip

FAULT_SPEC_OBJECT = obj(["kind"], kind=STRING)
FAULT = obj(
    ["id", "target", "kind", "spec", "text", "state", "fired", "seen"],
    id=STRING, target=STRING, kind=STRING, spec=FAULT_SPEC_OBJECT, text=STRING, state=STRING,
    created_at=NUMBER, created_time=NUMBER, expires_at=nullable("number"), fired=INTEGER,
    seen=INTEGER, last_fired_at=nullable("number"),
)  # fmt: skip
FIRING = obj(
    ["fault_id", "kind", "path", "number", "at"],
    fault_id=STRING, kind=STRING, path=STRING, number=INTEGER, seen=INTEGER, at=NUMBER,
    detail=ANY,
)  # fmt: skip

CHAOS_PLAN = obj(
    ["faults", "target", "duration", "seed", "rate", "ask_timeout", "settle"],
    faults=STRING, target=STRING, duration=NUMBER, seed=INTEGER, rate=NUMBER,
    ask_timeout=NUMBER, settle=NUMBER,
)  # fmt: skip
_PROGRESS = {
    "state": STRING, "elapsed": NUMBER, "duration": NUMBER, "sent": INTEGER, "ok": INTEGER,
    "failed": INTEGER, "refused": ANY, "timed_out": INTEGER, "firings": INTEGER,
    "error": nullable("string"),
}  # fmt: skip
CHAOS_SUMMARY = obj(["id", "plan", "state"], id=STRING, plan=CHAOS_PLAN, **_PROGRESS)
CHAOS_RUN = obj(
    ["id", "plan", "state", "report", "markdown"],
    id=STRING, plan=CHAOS_PLAN, report=nullable("object"), markdown=nullable("string"),
    **_PROGRESS,
)  # fmt: skip

REFUSED_PROBLEM: Schema = {
    "allOf": [
        ref("Problem"),
        obj(
            plugin=nullable("string"), reason=nullable("string"),
            ungranted={**array(STRING), "description": "SandboxNotGranted: what its sandbox"
                       " asks for that is not granted (grant it to go on)"},
            requests={**array(STRING), "description": "SandboxNotGranted: all it asks for"},
        ),
    ]
}  # fmt: skip
"""A 409 problem: ``PluginRefused`` (``plugin``, ``reason``) and ``SandboxNotGranted``,
which also lists ``ungranted`` and ``requests``."""
REFUSED = ref("Refused")

SECRET = obj(
    ["name", "asked_for_by"],
    name=STRING,
    asked_for_by=array(STRING, description="the plugins whose sandbox asks for it"),
)  # fmt: skip
SECRETS = obj(
    ["secrets", "count", "asked_for_but_not_set"],
    secrets=array(SECRET), count=INTEGER,
    asked_for_but_not_set=array(STRING, description="secrets a plugin asks for that are not set"),
)  # fmt: skip
"""``GET /api/v1/secrets``: names, never values."""

COMPONENTS: dict[str, Schema] = {"Actor": ACTOR, "Refused": REFUSED_PROBLEM}
"""Schemas the document holds once (``#/components/schemas/NAME``)."""
