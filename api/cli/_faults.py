"""``cws faults`` and ``cws chaos``: fault injection and chaos runs, through the daemon."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import asyncclick as click
import trio

from cws_actors.faults import parse_duration

from ._common import connect, echo_json, json_option, on_terminal, remote_options, table
from ._errors import CLIError


@click.group()
async def faults() -> None:
    """Inject, list and clear faults (crash, hang, latency, error_rate, drop, slow_start,
    kill, pause, memory_hog).

    A spec is compact text: crash | crash:0.05 | crash:after 10 | hang | latency:10ms |
    latency:10ms..50ms | latency:exp 20ms | error_rate:0.1 | drop:0.1 | slow_start:2s |
    kill | kill:every 10s | pause:1s | memory_hog, each optionally followed by
    'for DURATION' and 'times N'; join several with commas.
    """


def _fault_rows(items: list[dict[str, Any]]) -> list[list[str]]:
    return [[f["id"], f["target"], f["text"], f["state"], str(f["fired"]), str(f["seen"])]
            for f in items]  # fmt: skip


@faults.command("inject")
@click.argument("target")
@click.argument("spec")
@click.option("--id", "fault_id", help="The fault's id (default f1, f2...).")
@remote_options
@json_option
async def faults_inject(target: str, spec: str, fault_id: str | None, as_json: bool) -> None:
    """Inject SPEC into the actors TARGET names (a path or glob: /plugins/aws,
    /plugins/*)."""
    if not target.strip():
        raise click.BadParameter("empty; give an actor path or glob such as /plugins/aws",
                                 param_hint="TARGET")  # fmt: skip
    if not spec.strip():
        raise click.BadParameter("empty; give a fault such as crash:0.05 or latency:10ms",
                                 param_hint="SPEC")  # fmt: skip
    body: dict[str, Any] = {"target": target, "spec": spec}
    if fault_id is not None:
        body["id"] = fault_id
    async with connect() as client:
        answer = await client.post("/api/v1/faults", body)
    if as_json:
        echo_json(answer)
        return
    for fault in answer["faults"]:
        click.echo(f"{fault['id']}: {fault['text']} on {fault['target']}")
    if not answer.get("matches"):
        click.echo(f"warning: no actor matches {target!r} now; the fault waits for actors"
                   " spawned there (cws plugin list shows the plugins)", err=True)  # fmt: skip


@faults.command("list")
@click.option("--all", "include_all", is_flag=True, help="Finished faults too.")
@remote_options
@json_option
async def faults_list(include_all: bool, as_json: bool) -> None:
    """List the active faults and how often each fired."""
    async with connect() as client:
        answer = await client.get("/api/v1/faults", **({"all": "true"} if include_all else {}))
    if as_json:
        echo_json(answer)
        return
    if not answer["faults"]:
        click.echo("no faults")
        return
    headers = ["ID", "TARGET", "SPEC", "STATE", "FIRED", "SEEN"]
    click.echo(table(headers, _fault_rows(answer["faults"])))


@faults.command("clear")
@click.argument("fault_id", required=False)
@click.option("--target", help="Clear the faults injected with exactly this target.")
@remote_options
@json_option
async def faults_clear(fault_id: str | None, target: str | None, as_json: bool) -> None:
    """Clear one fault by id, those of a target, or (with neither) all of them."""
    if fault_id and target:
        raise click.UsageError("give a fault id or --target, not both")
    async with connect() as client:
        if fault_id:
            answer = await client.request("DELETE", f"/api/v1/faults/{fault_id}")
        else:
            params = {"target": target} if target else None
            answer = await client.request("DELETE", "/api/v1/faults", params=params)
    if as_json:
        echo_json(answer)
        return
    click.echo(f"cleared {len(answer['cleared'])} fault(s)")


@click.group()
async def chaos() -> None:
    """Chaos runs: seeded faults on a set of actors while they are driven with asks."""


def _duration(ctx: Any, param: Any, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _positive_duration(ctx: Any, param: Any, value: str) -> float:
    seconds = _duration(ctx, param, value)
    if seconds <= 0:
        raise click.BadParameter(f"must be more than 0 seconds, such as 30s or 2m; got {value!r}")
    return seconds


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]

    return {"count": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


@chaos.command("run")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every fault.")
@click.option("--duration", default="60s", show_default=True, callback=_positive_duration,
              help="How long the faults stay: 30s, 2m.")  # fmt: skip
@click.option("--target", default="/plugins/*", show_default=True,
              help="The actors: a path or glob.")  # fmt: skip
@click.option(
    "--faults",
    "fault_text",
    required=True,
    help="Compact specs, e.g. 'crash:0.05,latency:10ms..50ms,kill:every 10s'.",
)
@click.option("--rate", type=float, default=20.0, show_default=True,
              help="Asks a second to each target.")  # fmt: skip
@click.option("--ask-timeout", default="2s", show_default=True, callback=_positive_duration)
@click.option(
    "--settle",
    default="10s",
    show_default=True,
    callback=_duration,
    help="How long to wait for the targets to be ready after the faults end.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write chaos-SEED.json and chaos-SEED.md into this folder.",
)
@remote_options
@json_option
async def chaos_run(
    seed: int, duration: float, target: str, fault_text: str, rate: float,
    ask_timeout: float, settle: float, report_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Run a chaos experiment on the daemon and print its report (markdown, or --json).

    The report: faults fired, restarts, recovery time from fault to ready (p50, p99),
    asks ok / failed / refused / timed out, messages lost (dead-lettered or
    unaccounted), dead letters by reason, quarantines, and the daemon's /healthz latency
    measured by this command during the run.
    """
    plan = {"seed": seed, "duration": duration, "target": target, "faults": fault_text,
            "rate": rate, "ask_timeout": ask_timeout, "settle": settle}  # fmt: skip
    latencies: list[float] = []
    async with connect() as client:
        started = await client.post("/api/v1/chaos", plan)
        run_id = started["id"]

        async def probe_health(done: trio.Event) -> None:
            while not done.is_set():
                began = time.perf_counter()
                try:
                    await client.request("GET", "/healthz", timeout=5)
                except CLIError:
                    latencies.append(5.0)
                else:
                    latencies.append(time.perf_counter() - began)
                with trio.move_on_after(0.1):
                    await done.wait()

        done = trio.Event()
        view: dict[str, Any] = started
        show = on_terminal() and not as_json
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_health, done)
            bar_cm = (
                click.progressbar(length=max(1, int(duration * 10)), label="chaos", file=None)
                if show
                else contextlib.nullcontext(None)
            )
            with bar_cm as bar:
                shown = 0
                while view["state"] in ("pending", "running", "settling"):
                    await trio.sleep(0.25)
                    view = await client.get(f"/api/v1/chaos/{run_id}")
                    step = int(view["elapsed"] * 10) - shown
                    if bar is not None and step > 0:
                        bar.label = (f"chaos {view['state']}: {view['sent']} asks, "
                                     f"{view['firings']} faults fired")  # fmt: skip
                        bar.update(step)
                        shown += step
            done.set()
    if view["state"] == "failed" or view["report"] is None:
        raise CLIError(f"the chaos run failed: {view.get('error')}")
    report = view["report"]
    health = _percentiles(latencies)
    health["via"] = "HTTP /healthz"
    report["event_loop_latency"] = report["health_probe_latency"]
    report["health_probe_latency"] = health
    markdown = view["markdown"]
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| health-probe latency"):

            def ms(v: float | None) -> str:
                return "-" if v is None else f"{v * 1000:.1f}ms"

            lines[i] = (
                f"| health-probe latency p50 / p99 | {ms(health['p50'])} / "
                f"{ms(health['p99'])} ({health['count']} probes, HTTP /healthz) |"
            )
    markdown = "\n".join(lines) + "\n"
    if report_dir is not None:
        folder = trio.Path(report_dir)
        await folder.mkdir(parents=True, exist_ok=True)
        await (folder / f"chaos-{seed}.json").write_text(json.dumps(report, indent=2) + "\n")
        await (folder / f"chaos-{seed}.md").write_text(markdown)
    if as_json:
        echo_json(report)
    else:
        click.echo(markdown, nl=False)
