"""``cws demo``: a live supervision tree in the terminal, with no daemon."""

from __future__ import annotations

import random
from typing import Any

import asyncclick as click
import trio

from supervision import (
    Backoff,
    ChildSpec,
    OnExhausted,
    Probe,
    ProbeKind,
    Strategy,
    Supervisor,
    open_supervisor,
    supervisor_spec,
)


def _worker(name: str) -> Any:
    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(name)
        await trio.sleep_forever()

    return run


def _flaky(rng: random.Random, crash_probability: float) -> Any:
    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(0.5)
            if rng.random() < crash_probability:
                raise RuntimeError("flaky worker lost its connection")

    return run


def _hanger(rng: random.Random, health: dict[str, bool]) -> Any:
    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        health["alive"] = True
        task_status.started()
        while True:
            await trio.sleep(0.5)
            if rng.random() < 0.1:
                health["alive"] = False  # stuck: only liveness can tell
                await trio.sleep_forever()

    return run


def _report(supervisor: Supervisor, elapsed: float) -> str:
    parts = []
    for child in supervisor.statistics().children:
        last = f" last={child.last_exit}" if child.last_exit else ""
        parts.append(f"{child.id}={child.state.value}(restarts={child.restarts}{last})")
    return f"[{elapsed:5.1f}s] " + "  ".join(parts)


@click.command()
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds to run.")
@click.option("--seed", type=int, default=None, help="Seed the crashes and the backoff jitter.")
async def demo(duration: float, seed: int | None) -> None:
    """Run a live supervision tree: a flaky worker with backoff, a worker that hangs and
    is caught by its liveness probe, and a nested rest_for_one subtree."""
    if duration <= 0:
        raise click.BadParameter(f"must be > 0, got {duration}", param_hint="--duration")
    rng = random.Random(seed)
    health = {"alive": True}
    started = trio.current_time()
    async with open_supervisor(max_restarts=50, period=10, name="demo", rng=rng) as root:
        await root.start_child(
            supervisor_spec(
                "pipeline", [ChildSpec("reader", _worker("reader")),
                             ChildSpec("writer", _worker("writer"))],
                strategy=Strategy.REST_FOR_ONE,
            )
        )  # fmt: skip
        await root.start_child(
            ChildSpec(
                "flaky",
                _flaky(rng, 0.3),
                backoff=Backoff(0.1, 2.0),
                on_exhausted=OnExhausted.QUARANTINE,
            )
        )
        liveness = Probe(
            ProbeKind.LIVENESS, lambda: health["alive"], period=0.5, failure_threshold=2
        )
        await root.start_child(
            ChildSpec("hanger", _hanger(rng, health), probes=[liveness], shutdown=1)
        )
        with trio.move_on_after(duration):
            while True:
                await trio.sleep(1)
                click.echo(_report(root, trio.current_time() - started))
        click.echo("final: " + _report(root, trio.current_time() - started))
