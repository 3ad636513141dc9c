"""``/api/v1/faults`` and ``/api/v1/chaos``: fault injection and chaos runs over HTTP.

Mutations need the ``faults:inject`` scope; reads need a token of any scope (what is
being broken on purpose is not for anonymous eyes)."""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.lowlevel
from quart import Blueprint

from cws_actors.faults import (
    LATENCY_DISTRIBUTIONS,
    MAX_TARGET_LENGTH,
    MAX_TARGET_SEGMENTS,
    ChaosPlan,
    ChaosPlanError,
    ChaosRun,
    FaultKind,
    FaultNotFound,
    FaultSpec,
    FaultSpecError,
    parse_fault_list,
)

from ._problems import HTTPProblem
from ._requests import current_daemon
from ._routes import Access, Body, Reply, Route, checked_body, path, query, query_value, route
from ._shapes import (
    ANY,
    CHAOS_RUN,
    CHAOS_SUMMARY,
    FAULT,
    FIRING,
    INTEGER,
    STRING,
    array,
    obj,
)  # fmt: skip

SCOPE = "faults:inject"
KEPT_RUNS = 20
MAX_SPEC_TEXT = 1024
"""The longest compact fault text (``crash:0.05,latency:10ms..50ms``)."""
MAX_SPECS = 64
"""The most faults one request injects."""

blueprint = Blueprint("faults", __name__)

# The shapes of what these routes take: the document's, and those checked before each
# handler runs. The fault grammar's rules across fields (a latency range's upper bound
# at least its lower one, crash takes probability or after) are the handler's: JSON
# Schema cannot say them.
_TARGET = {
    "type": "string", "maxLength": MAX_TARGET_LENGTH,
    "pattern": f"^/[^/]*(?:/[^/]*){{0,{MAX_TARGET_SEGMENTS - 1}}}$",
    "description": f"an actor path or a glob starting with '/' (at most {MAX_TARGET_LENGTH}"
    f" characters and {MAX_TARGET_SEGMENTS} segments), such as '/plugins/aws' or"
    " '/plugins/*'",
}  # fmt: skip
_DURATION = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h|d)\s*$"},
    ],
    "description": "seconds, or a number with ms, s, m, h or d such as '10ms' or '1.5s'",
}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_SPEC_OBJECT = {
    "type": "object",
    "required": ["kind"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": [kind.value for kind in FaultKind]},
        "probability": _PROBABILITY,
        "after": {"type": "integer", "minimum": 0},
        "delay": _DURATION, "delay_max": _DURATION, "every": _DURATION,
        "pause_for": _DURATION, "duration": _DURATION,
        "distribution": {"enum": list(LATENCY_DISTRIBUTIONS)},
        "count": {"type": "integer", "minimum": 1},
    },
    "description": "a fault spec object such as {\"kind\": \"crash\", \"probability\": 0.05}",
}  # fmt: skip
_SPEC_TEXT = {
    "type": "string", "minLength": 1, "maxLength": MAX_SPEC_TEXT,
    "description": "compact fault text such as 'crash:0.05,latency:10ms..50ms'",
}  # fmt: skip
_SPECS = {
    "anyOf": [
        _SPEC_TEXT,
        _SPEC_OBJECT,
        {"type": "array", "minItems": 1, "maxItems": MAX_SPECS,
         "items": {"anyOf": [_SPEC_TEXT, _SPEC_OBJECT]}},
    ],
    "description": "compact text such as 'crash:0.05,latency:10ms..50ms', a spec object such"
    " as {\"kind\": \"crash\", \"probability\": 0.05}, or a list of them",
}  # fmt: skip
_ID = {
    "type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
    "description": "letters, digits, '_', '-' and '.' (at most 64), not starting with '-'"
    " or '.'",
}  # fmt: skip
INJECT = Body({
    "type": "object",
    "required": ["target", "spec"],
    "properties": {"target": _TARGET, "spec": _SPECS, "id": _ID},
}, examples=(
    {"target": "/plugins/aws", "spec": "crash:0.05 for 1m"},
    {"target": "/plugins/*", "spec": ["latency:10ms..50ms", {"kind": "drop", "probability": 0.01}]},
))  # fmt: skip
CHAOS_PLAN = Body({
    "type": "object",
    "required": ["faults"],
    "additionalProperties": False,
    "properties": {
        "faults": _SPECS, "target": _TARGET, "duration": _DURATION,
        "seed": {"type": "integer"}, "rate": {"type": "number", "exclusiveMinimum": 0},
        "ask_timeout": _DURATION, "settle": _DURATION, "sample_interval": _DURATION,
    },
}, examples=(
    {"faults": "crash:0.05,latency:10ms..50ms", "target": "/plugins/*", "duration": "60s",
     "seed": 42, "rate": 20},
))  # fmt: skip
_FAULTS = obj(["faults", "count", "seed"], faults=array(FAULT), count=INTEGER, seed=ANY)
_CLEARED = Reply(200, "The faults cleared", obj(["cleared"], cleared=array(FAULT)))
_RUN_ID = path("id", "the chaos run's id")


def _bad(exc: Exception) -> HTTPProblem:
    return HTTPProblem(400, "Bad fault", str(exc))


def _specs(body: dict[str, Any]) -> list[FaultSpec]:
    spec = body.get("spec", body.get("faults"))
    if isinstance(spec, str):
        specs = parse_fault_list(spec)
    elif isinstance(spec, dict):
        specs = [FaultSpec.from_dict(spec)]
    elif isinstance(spec, list):
        specs = [FaultSpec.parse(s) if isinstance(s, str) else FaultSpec.from_dict(s) for s in spec]
    else:
        raise FaultSpecError(
            "the body needs 'spec': compact text such as 'crash:0.05,latency:10ms..50ms',"
            ' a spec object such as {"kind": "crash", "probability": 0.05}, or a list'
        )
    if not specs:
        raise FaultSpecError("'spec' is empty; give at least one fault such as 'crash'")
    return specs


@route(blueprint, Route(
    "post", "/api/v1/faults", "Inject faults: target (path or glob), spec, id",
    (Reply(201, "Injected", obj(["faults", "seed", "matches"], faults=array(FAULT), seed=ANY,
                                matches=array(STRING))),),
    Access.TOKEN, (SCOPE,), body=INJECT, problems=(409,),
))  # fmt: skip
async def inject() -> Any:
    faults = current_daemon().runtime.faults
    body = checked_body()
    target = body["target"]
    fault_id = body.get("id")
    if fault_id is not None and any(r.id == fault_id for r in faults.list()):
        raise HTTPProblem(
            409, "Conflict", f"fault {fault_id!r} is already active; clear it or pick another id"
        )
    try:
        specs = _specs(body)
        if fault_id is not None and len(specs) > 1:
            raise FaultSpecError("'id' names one fault; give one spec with it")
        # Check them all before injecting any: a bad one changes nothing.
        for spec in specs:
            if spec.kind.process_level:
                faults.check_process_target(target, spec.kind)
        records = [faults.inject(target, spec, id=fault_id) for spec in specs]
    except ValueError as exc:  # FaultSpecError, FaultTargetError
        raise _bad(exc) from None
    # The actors it reaches now (it also reaches those spawned later that match).
    reached = faults.reached(target)
    return {"faults": [r.as_dict() for r in records], "seed": faults.seed,
            "matches": reached}, 201  # fmt: skip


@route(blueprint, Route(
    "get", "/api/v1/faults", "Active faults (all=true: finished ones too)",
    (Reply(200, "The faults", _FAULTS),), Access.TOKEN,
    params=(query("all", {"type": "boolean", "default": False}, "finished faults too"),),
))  # fmt: skip
async def list_faults() -> Any:
    faults = current_daemon().runtime.faults
    include = bool(query_value("all"))
    records = faults.list(include_finished=include)
    return {"faults": [r.as_dict() for r in records], "count": len(records),
            "seed": faults.seed}  # fmt: skip


@route(blueprint, Route(
    "get", "/api/v1/faults/firings", "The latest firings of faults (at most 1000)",
    (Reply(200, "The firings", obj(["firings", "count"], firings=array(FIRING),
                                   count=INTEGER)),),
    Access.TOKEN,
))  # fmt: skip
async def firings() -> Any:
    faults = current_daemon().runtime.faults
    fired = faults.firings()
    return {"firings": [f.as_dict() for f in fired[-1000:]], "count": len(fired)}


@route(blueprint, Route(
    "get", "/api/v1/faults/{id}", "One fault", (Reply(200, "The fault", FAULT),),
    Access.TOKEN, params=(path("id", "the fault's id"),), problems=(404,),
))  # fmt: skip
async def get_fault(id: str) -> Any:
    fault_id = id
    faults = current_daemon().runtime.faults
    try:
        return faults.get(fault_id).as_dict()
    except FaultNotFound as exc:
        raise HTTPProblem(404, "Not found", str(exc)) from None


@route(blueprint, Route(
    "delete", "/api/v1/faults/{id}", "Clear one fault", (_CLEARED,),
    Access.TOKEN, (SCOPE,), params=(path("id", "the fault's id"),), problems=(404,),
))  # fmt: skip
async def clear_one(id: str) -> Any:
    fault_id = id
    faults = current_daemon().runtime.faults
    try:
        cleared = faults.clear(fault_id)
    except FaultNotFound as exc:
        raise HTTPProblem(404, "Not found", str(exc)) from None
    return {"cleared": [r.as_dict() for r in cleared]}


@route(blueprint, Route(
    "delete", "/api/v1/faults", "Clear all faults, or those of a target", (_CLEARED,),
    Access.TOKEN, (SCOPE,),
    params=(query("target", {"type": "string"}, "only the faults injected with this target"),),
))  # fmt: skip
async def clear_many() -> Any:
    faults = current_daemon().runtime.faults
    cleared = faults.clear(target=query_value("target") or None)
    return {"cleared": [r.as_dict() for r in cleared]}


# ------------------------------------------------------------------ chaos


def run_view(run_id: str, run: ChaosRun) -> dict[str, Any]:
    view: dict[str, Any] = {"id": run_id, "plan": run.plan.as_dict(), **run.progress()}
    view["report"] = run.report.as_dict() if run.report is not None else None
    view["markdown"] = run.report.markdown() if run.report is not None else None
    return view


async def health_check() -> None:
    # How long the daemon's event loop takes to come back to a probe; the CLI
    # measures /healthz over HTTP beside it.
    await trio.lowlevel.checkpoint()


@route(blueprint, Route(
    "post", "/api/v1/chaos", "Start a chaos run: faults, target, duration, seed, rate...",
    (Reply(202, "Started", CHAOS_RUN),),
    Access.TOKEN, (SCOPE,), body=CHAOS_PLAN, problems=(409,),
))  # fmt: skip
async def start_chaos() -> Any:
    daemon = current_daemon()
    body = checked_body()
    if any(r.state in ("pending", "running", "settling") for r in daemon.chaos_runs.values()):
        raise HTTPProblem(409, "Busy", "a chaos run is in progress; wait for it or cancel it")
    try:
        plan = ChaosPlan.from_dict(body)
    except (ChaosPlanError, FaultSpecError, ValueError) as exc:
        raise HTTPProblem(400, "Bad chaos plan", str(exc)) from None
    run = ChaosRun(daemon.runtime, plan, health=health_check)
    run_id = f"c{int(time.time() * 1000):x}"
    assert daemon.background is not None
    started = trio.Event()
    failure: list[Exception] = []

    async def go() -> None:
        scope = trio.CancelScope()
        daemon.chaos_scopes.append(scope)
        try:
            with scope:
                started.set()
                try:
                    await run.run()
                except (ChaosPlanError, FaultSpecError) as exc:
                    failure.append(exc)
                    run.error = str(exc)
                    run.state = "failed"
                except Exception as exc:  # noqa: BLE001 - a run's failure must not stop the daemon
                    run.error = f"{type(exc).__name__}: {exc}"
                    run.state = "failed"
        finally:
            daemon.chaos_scopes.remove(scope)

    daemon.chaos_runs[run_id] = run
    while len(daemon.chaos_runs) > KEPT_RUNS:
        del daemon.chaos_runs[next(iter(daemon.chaos_runs))]
    daemon.background.start_soon(go)
    await started.wait()
    await trio.lowlevel.checkpoint()  # let it resolve its targets: a bad target answers 400 now
    if failure:
        del daemon.chaos_runs[run_id]
        raise HTTPProblem(400, "Bad chaos plan", str(failure[0]))
    return run_view(run_id, run), 202


@route(blueprint, Route(
    "get", "/api/v1/chaos", "Chaos runs, the latest last",
    (Reply(200, "The runs", obj(["runs"], runs=array(CHAOS_SUMMARY))),), Access.TOKEN,
))  # fmt: skip
async def list_chaos() -> Any:
    daemon = current_daemon()
    return {"runs": [{"id": i, "plan": r.plan.as_dict(), **r.progress()}
                     for i, r in daemon.chaos_runs.items()]}  # fmt: skip


@route(blueprint, Route(
    "get", "/api/v1/chaos/{id}", "A chaos run: progress, then its report",
    (Reply(200, "The run", CHAOS_RUN),), Access.TOKEN, params=(_RUN_ID,), problems=(404,),
))  # fmt: skip
async def get_chaos(id: str) -> Any:
    run_id = id
    daemon = current_daemon()
    run = daemon.chaos_runs.get(run_id)
    if run is None:
        raise HTTPProblem(404, "Not found", f"no chaos run {run_id!r}")
    return run_view(run_id, run)


@route(blueprint, Route(
    "delete", "/api/v1/chaos/{id}", "End a chaos run early",
    (Reply(200, "The run, ending", CHAOS_RUN),), Access.TOKEN, (SCOPE,), params=(_RUN_ID,),
    problems=(404,),
))  # fmt: skip
async def cancel_chaos(id: str) -> Any:
    run_id = id
    daemon = current_daemon()
    run = daemon.chaos_runs.get(run_id)
    if run is None:
        raise HTTPProblem(404, "Not found", f"no chaos run {run_id!r}")
    run.cancel()
    return run_view(run_id, run)
