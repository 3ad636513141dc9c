"""Rule 5: shutdown deadlines, abandonment, no task left behind, nursery-like failure."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from supervision import ChildSpec, ExitKind, SupervisorState, open_supervisor

from ._workers import Workers, all_tasks


def stubborn(log: list[str], name: str, release: trio.Event) -> Any:
    """A child whose cleanup is a shielded wait: it ignores cancellation until released."""

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await release.wait()
            log.append(f"{name} finally ended")

    return run


async def test_child_past_its_deadline_is_abandoned_and_the_supervisor_still_exits(
    autojump_clock,
) -> None:
    log: list[str] = []
    release = trio.Event()
    tasks_before = all_tasks()
    async with open_supervisor(name="sup") as supervisor:
        for name, shutdown in (("stuck", 2), ("slow", 3)):
            spec = ChildSpec(name, stubborn(log, name, release), shutdown=shutdown)
            await supervisor.start_child(spec)
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at == 5.0  # 3 s for "slow", then 2 s for "stuck"
    stats = supervisor.statistics()
    assert stats.state is SupervisorState.CLOSED
    assert stats.abandoned == 2
    for child in stats.children:
        assert child.last_exit.kind is ExitKind.SHUTDOWN_TIMEOUT
        assert "abandoned" in child.last_exit.message
    assert log == []  # both still run, abandoned to the host task...
    assert all_tasks() != tasks_before
    release.set()  # ...until their shielded sections end
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(log) == ["slow finally ended", "stuck finally ended"]
    assert supervisor.statistics().abandoned == 0
    assert all_tasks() == tasks_before


async def test_no_task_the_supervisor_started_outlives_it(autojump_clock) -> None:
    from supervision import Backoff, Probe, ProbeKind, supervisor_spec

    workers = Workers()
    tasks_before = all_tasks()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(
            workers.spec(
                "probed",
                probes=[Probe(ProbeKind.LIVENESS, lambda: True, period=1),
                        Probe(ProbeKind.READINESS, lambda: True, period=1)],
            )
        )  # fmt: skip
        await supervisor.start_child(supervisor_spec("nested", [workers.spec("n1")]))
        await supervisor.start_child(workers.spec("backing-off", backoff=Backoff(10, 10)))
        workers.crash("backing-off")  # it will sit in its backoff delay
        await trio.sleep(3)
        assert len(all_tasks()) > len(tasks_before)
    assert all_tasks() == tasks_before


async def test_children_get_their_shutdown_time_to_clean_up(autojump_clock) -> None:
    log = []

    async def tidy(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1.5)  # within its 2 s
            log.append(trio.current_time())

    async with open_supervisor() as supervisor:
        await supervisor.start_child(ChildSpec("tidy", tidy, shutdown=2))
    assert log == [1.5]
    child = supervisor.statistics().child("tidy")
    assert child.last_exit.kind is ExitKind.CANCELLED
    assert supervisor.statistics().abandoned == 0


async def test_body_exception_stops_children_and_propagates() -> None:
    workers = Workers()
    with pytest.raises(ZeroDivisionError):
        async with open_supervisor() as supervisor:
            await supervisor.start_child(workers.spec("a"))
            1 / 0  # noqa: B018 - the body fails
    assert workers.log == ["start a", "exit a"]


async def test_outer_cancellation_stops_children() -> None:
    workers = Workers()
    with trio.move_on_after(0):
        async with open_supervisor() as supervisor:
            with trio.CancelScope(shield=True):
                await supervisor.start_child(workers.spec("a"))
            await trio.sleep_forever()
    assert workers.log == ["start a", "exit a"]
    assert supervisor.state is SupervisorState.CLOSED
