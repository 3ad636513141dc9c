"""Rule 7: every exit has a recorded reason."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from supervision import (
    ChildSpec,
    ExitKind,
    Probe,
    ProbeKind,
    Restart,
    open_supervisor,
    supervisor_spec,
)

from ._workers import Workers


async def test_each_kind_of_exit_is_recorded(autojump_clock) -> None:
    workers = Workers()

    async def refuses_to_stop(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED):
        task_status.started()
        with trio.CancelScope(shield=True):
            await trio.sleep(100)

    async with open_supervisor(max_restarts=10) as supervisor:
        for child_id in ("normal", "exception", "cancelled"):
            await supervisor.start_child(workers.spec(child_id, restart=Restart.TRANSIENT))
        await supervisor.start_child(
            workers.spec("liveness", probes=[Probe(ProbeKind.LIVENESS, lambda: False, period=1)])
        )
        await supervisor.start_child(ChildSpec("stuck", refuses_to_stop, shutdown=1))
        await supervisor.start_child(
            supervisor_spec("escalated", [workers.spec("inner")], max_restarts=0)
        )
        workers.finish("normal")
        workers.crash("exception")
        await supervisor.terminate_child("cancelled")
        workers.crash("inner")
        await trio.sleep(2.5)
        await supervisor.terminate_child("stuck")
        stats = supervisor.statistics()

    reasons = {child.id: child.last_exit for child in stats.children}
    assert {child_id: reason.kind for child_id, reason in reasons.items()} == {
        "normal": ExitKind.NORMAL,
        "exception": ExitKind.EXCEPTION,
        "cancelled": ExitKind.CANCELLED,
        "liveness": ExitKind.LIVENESS,
        "stuck": ExitKind.SHUTDOWN_TIMEOUT,
        "escalated": ExitKind.ESCALATED,
    }
    assert reasons["exception"].exception_type == "RuntimeError"
    assert reasons["exception"].message == "exception crashed"
    assert str(reasons["exception"]) == "exception: RuntimeError: exception crashed"
    assert reasons["cancelled"].message == "terminated"
    assert reasons["escalated"].exception_type == "RestartIntensityExceeded"
    assert not reasons["normal"].abnormal
    assert not reasons["cancelled"].abnormal
    assert reasons["exception"].abnormal
    assert reasons["liveness"].abnormal
    assert reasons["stuck"].at == 3.5  # terminated at 2.5, deadline 1 s


async def test_exception_groups_from_a_childs_nursery_are_recorded() -> None:
    runs = []

    async def with_nursery(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED):
        runs.append(1)
        task_status.started()
        if len(runs) > 1:
            await trio.sleep_forever()

        async def fail() -> None:
            raise KeyError("lost")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            await trio.sleep_forever()

    async with open_supervisor() as supervisor:
        await supervisor.start_child(ChildSpec("n", with_nursery))
        await trio.testing.wait_all_tasks_blocked()
        reason = supervisor.statistics().child("n").last_exit
        assert reason.kind is ExitKind.EXCEPTION
        assert reason.exception_type == "ExceptionGroup"
