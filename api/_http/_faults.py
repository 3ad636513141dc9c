"""``/api/v1/faults`` and ``/api/v1/chaos``: fault injection and chaos runs over HTTP.

Mutations need the ``faults:inject`` scope; reads need a token of any scope (what is
being broken on purpose is not for anonymous eyes)."""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.lowlevel
from quart import Blueprint, request

from cws_actors.faults import (
    ChaosPlan,
    ChaosPlanError,
    ChaosRun,
    FaultNotFound,
    FaultSpec,
    FaultSpecError,
    parse_fault_list,
)

from ._problems import HTTPProblem
from ._requests import current_daemon, json_body, principal

SCOPE = "faults:inject"
KEPT_RUNS = 20

blueprint = Blueprint("faults", __name__)


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


@blueprint.post("/api/v1/faults")
async def inject() -> Any:
    faults = current_daemon().runtime.faults
    await principal(SCOPE)
    body = await json_body()
    if not isinstance(body, dict):
        raise HTTPProblem(400, "Bad request", "the body must be a JSON object")
    target = body.get("target")
    if not isinstance(target, str) or not target:
        raise HTTPProblem(
            400, "Bad fault", "the body needs 'target': an actor path or glob, such as"
            " '/plugins/aws' or '/plugins/*'",
        )  # fmt: skip
    fault_id = body.get("id")
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


@blueprint.get("/api/v1/faults")
async def list_faults() -> Any:
    faults = current_daemon().runtime.faults
    await principal()
    include = request.args.get("all", "").lower() in ("1", "true", "yes")
    records = faults.list(include_finished=include)
    return {"faults": [r.as_dict() for r in records], "count": len(records),
            "seed": faults.seed}  # fmt: skip


@blueprint.get("/api/v1/faults/firings")
async def firings() -> Any:
    faults = current_daemon().runtime.faults
    await principal()
    fired = faults.firings()
    return {"firings": [f.as_dict() for f in fired[-1000:]], "count": len(fired)}


@blueprint.get("/api/v1/faults/<fault_id>")
async def get_fault(fault_id: str) -> Any:
    faults = current_daemon().runtime.faults
    await principal()
    try:
        return faults.get(fault_id).as_dict()
    except FaultNotFound as exc:
        raise HTTPProblem(404, "Not found", str(exc)) from None


@blueprint.delete("/api/v1/faults/<fault_id>")
async def clear_one(fault_id: str) -> Any:
    faults = current_daemon().runtime.faults
    await principal(SCOPE)
    try:
        cleared = faults.clear(fault_id)
    except FaultNotFound as exc:
        raise HTTPProblem(404, "Not found", str(exc)) from None
    return {"cleared": [r.as_dict() for r in cleared]}


@blueprint.delete("/api/v1/faults")
async def clear_many() -> Any:
    faults = current_daemon().runtime.faults
    await principal(SCOPE)
    cleared = faults.clear(target=request.args.get("target") or None)
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


@blueprint.post("/api/v1/chaos")
async def start_chaos() -> Any:
    daemon = current_daemon()
    await principal(SCOPE)
    body = await json_body()
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


@blueprint.get("/api/v1/chaos")
async def list_chaos() -> Any:
    daemon = current_daemon()
    await principal()
    return {"runs": [{"id": i, "plan": r.plan.as_dict(), **r.progress()}
                     for i, r in daemon.chaos_runs.items()]}  # fmt: skip


@blueprint.get("/api/v1/chaos/<run_id>")
async def get_chaos(run_id: str) -> Any:
    daemon = current_daemon()
    await principal()
    run = daemon.chaos_runs.get(run_id)
    if run is None:
        raise HTTPProblem(404, "Not found", f"no chaos run {run_id!r}")
    return run_view(run_id, run)


@blueprint.delete("/api/v1/chaos/<run_id>")
async def cancel_chaos(run_id: str) -> Any:
    daemon = current_daemon()
    await principal(SCOPE)
    run = daemon.chaos_runs.get(run_id)
    if run is None:
        raise HTTPProblem(404, "Not found", f"no chaos run {run_id!r}")
    run.cancel()
    return run_view(run_id, run)
