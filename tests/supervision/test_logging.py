"""What the supervisor logs (logger ``supervision``): one WARNING per crash with its
reason, one per restart with its backoff, one per quarantine; an ERROR when it gives up;
and the time of the latest restart in its statistics."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from supervision import (
    Backoff,
    ChildSpec,
    ChildState,
    Jitter,
    OnExhausted,
    RestartIntensityExceeded,
    Strategy,
    open_supervisor,
)

from ._workers import Workers


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "supervision"]


async def test_a_crash_logs_its_reason_then_its_restart_with_the_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="supervision")
    workers = Workers()
    backoff = Backoff(2.0, 2.0, jitter=Jitter.NONE)
    async with open_supervisor(name="/plugins", max_restarts=5, period=60) as supervisor:
        await supervisor.start_child(workers.spec("aws", backoff=backoff))
        assert records(caplog) == []  # a start is the host's to log, not a crash
        await trio.sleep(7)
        workers.crash("aws")
        await trio.testing.wait_all_tasks_blocked()
        crashed, restarting = records(caplog)
        stats = supervisor.statistics().child("aws")
        assert stats.last_restart_at == 7.0  # when the restart was decided
        await supervisor.wait_ready("aws")
        assert trio.current_time() == 9.0  # after its 2 s backoff
    assert crashed.levelno == logging.WARNING
    assert crashed.getMessage() == "/plugins/aws crashed: exception: RuntimeError: aws crashed"
    assert (crashed.supervisor, crashed.child) == ("/plugins", "aws")  # type: ignore[attr-defined]
    assert crashed.reason == "exception: RuntimeError: aws crashed"  # type: ignore[attr-defined]
    assert crashed.exit_kind == "exception"  # type: ignore[attr-defined]
    assert restarting.levelno == logging.WARNING
    assert restarting.getMessage() == "restarting /plugins/aws in 2.00 s (restart 1)"
    assert restarting.backoff == 2.0  # type: ignore[attr-defined]
    assert restarting.restarts == 1  # type: ignore[attr-defined]
    # One line each: nothing else was logged for this crash (its shutdown is not one).
    assert len(records(caplog)) == 2


async def test_a_child_that_never_restarted_has_no_restart_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a"))
        await supervisor.restart_child("a")  # an operator's restart is not counted
        assert supervisor.statistics().child("a").last_restart_at is None


async def test_a_failed_restart_is_logged_as_a_failed_start(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="supervision")
    runs = 0

    async def flaky(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise OSError("the port is taken")
        task_status.started()
        if runs == 1:
            raise ValueError("first run dies")
        await trio.sleep_forever()

    backoff = Backoff(1.0, 1.0, jitter=Jitter.NONE)
    async with open_supervisor(max_restarts=5, period=60) as supervisor:
        await supervisor.start_child(ChildSpec("f", flaky, backoff=backoff))
        await supervisor.wait_ready("f")
        await trio.testing.wait_all_tasks_blocked()
        messages = [r.getMessage() for r in records(caplog)]
    assert messages == [
        "supervisor/f crashed: exception: ValueError: first run dies",
        "restarting supervisor/f in 1.00 s (restart 1)",
        "supervisor/f failed to start: exception: OSError: the port is taken",
        "restarting supervisor/f in 1.00 s (restart 2)",
    ]


async def test_a_quarantine_is_one_warning_with_its_budget(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervision")
    workers = Workers()
    async with open_supervisor(name="/plugins", max_restarts=2, period=10) as supervisor:
        await supervisor.start_child(workers.spec("loop", on_exhausted=OnExhausted.QUARANTINE))
        for _ in range(3):
            workers.crash("loop")
            await trio.testing.wait_all_tasks_blocked()
            if supervisor.statistics().child("loop").state is not ChildState.QUARANTINED:
                await supervisor.wait_ready("loop")
        logged = records(caplog)
        assert [r.getMessage().split(":")[0] for r in logged] == [
            "/plugins/loop crashed",
            "restarting /plugins/loop in 0.00 s (restart 1)",
            "/plugins/loop crashed",
            "restarting /plugins/loop in 0.00 s (restart 2)",
            "/plugins/loop crashed",
            "/plugins/loop quarantined",
        ]
        quarantined = logged[-1]
        assert quarantined.levelno == logging.WARNING
        assert quarantined.getMessage() == (
            "/plugins/loop quarantined: more than 2 restarts within 10 s;"
            " it stays stopped until its quarantine is cleared"
        )
        assert quarantined.state == "quarantined"  # type: ignore[attr-defined]
        assert (quarantined.max_restarts, quarantined.period) == (2, 10)  # type: ignore[attr-defined]
        caplog.clear()
        await supervisor.clear_quarantine("loop")
        (cleared,) = records(caplog)
        assert cleared.levelno == logging.INFO
        assert cleared.getMessage() == "/plugins/loop: quarantine cleared, starting it again"


async def test_a_supervisor_that_gives_up_logs_an_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="supervision")
    workers = Workers()
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded):
        async with open_supervisor(name="/", max_restarts=1, period=10) as supervisor:
            await supervisor.start_child(workers.spec("a"))
            workers.crash("a")
            await trio.testing.wait_all_tasks_blocked()
            await supervisor.wait_ready("a")
            workers.crash("a")
            await trio.sleep_forever()  # cancelled when the supervisor gives up
    errors = [r for r in records(caplog) if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "supervisor / gave up: more than 1 restarts within 10 s, the last of /a;"
        " it stops its children and escalates"
    ]
    assert errors[0].state == "escalated"  # type: ignore[attr-defined]


async def test_a_group_restart_is_one_line_naming_the_siblings(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="supervision")
    workers = Workers()
    async with open_supervisor(
        strategy=Strategy.ONE_FOR_ALL, max_restarts=5, rng=random.Random(1)
    ) as supervisor:
        for name in "abc":
            await supervisor.start_child(workers.spec(name))
        workers.crash("b")
        await trio.testing.wait_all_tasks_blocked()
        await supervisor.wait_ready("c")
    messages = [r.getMessage() for r in records(caplog)]
    # The siblings' stops are part of the restart, not crashes of their own.
    assert messages == [
        "supervisor/b crashed: exception: RuntimeError: b crashed",
        "restarting supervisor/b in 0.00 s with supervisor/a, supervisor/c (one_for_all)"
        " (restart 1)",
    ]
    assert records(caplog)[1].group == ["a", "b", "c"]  # type: ignore[attr-defined]
    stats = supervisor.statistics()
    assert {c.id: c.last_restart_at for c in stats.children} == {"a": 0.0, "b": 0.0, "c": 0.0}
