"""Rule 3: restart intensity, failure of the supervisor, escalation to a parent."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from supervision import (
    ChildState,
    ExitKind,
    RestartIntensityExceeded,
    Strategy,
    SupervisorClosed,
    SupervisorState,
    open_supervisor,
    supervisor_spec,
)

from ._workers import Workers, all_tasks


async def test_too_many_restarts_stop_children_in_reverse_order_and_fail(autojump_clock) -> None:
    workers = Workers()
    body = []
    tasks_before = all_tasks()
    with pytest.raises(RestartIntensityExceeded) as caught:
        async with open_supervisor(max_restarts=2, period=10, name="root") as supervisor:
            for child_id in "abc":
                await supervisor.start_child(workers.spec(child_id))
            try:
                for _ in range(3):
                    await trio.sleep(1)
                    workers.crash("b")
                    await trio.testing.wait_all_tasks_blocked()
                await trio.sleep_forever()
            finally:
                body.append(("body cancelled at", trio.current_time()))
    assert body == [("body cancelled at", 3.0)]
    # 3 crashes of b; the first two restarted it; the third stops c then a.
    assert workers.log == [
        "start a", "start b", "start c",
        "exit b", "start b",
        "exit b", "start b",
        "exit b", "exit c", "exit a",
    ]  # fmt: skip
    assert "3 restarts within 10s" in str(caught.value)
    assert caught.value.child_id == "b"
    stats = supervisor.statistics()
    assert stats.state is SupervisorState.FAILED
    assert [c.last_exit.kind for c in stats.children] == [
        ExitKind.ESCALATED,
        ExitKind.EXCEPTION,
        ExitKind.ESCALATED,
    ]
    assert all_tasks() == tasks_before
    with pytest.raises(SupervisorClosed, match="open a new one"):
        await supervisor.start_child(workers.spec("d"))


async def test_restarts_spread_wider_than_the_period_never_fail(autojump_clock) -> None:
    workers = Workers()
    async with open_supervisor(max_restarts=2, period=5) as supervisor:
        await supervisor.start_child(workers.spec("a"))
        for _ in range(20):
            await trio.sleep(2.6)  # at most 2 restarts in any 5 s window
            workers.crash("a")
            await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
        assert stats.restarts == 20
        assert stats.recent_restarts == 2
        assert stats.child("a").state is ChildState.RUNNING


async def test_max_restarts_zero_fails_on_the_first_crash() -> None:
    workers = Workers()
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor(max_restarts=0) as supervisor:
            await supervisor.start_child(workers.spec("a"))
            workers.crash("a")
            await trio.sleep_forever()


async def test_nested_supervisor_failure_is_an_ordinary_child_failure_of_its_parent() -> None:
    workers = Workers()
    inner = supervisor_spec(
        "inner", [workers.spec("x"), workers.spec("y")], strategy=Strategy.ONE_FOR_ALL,
        max_restarts=1,
    )  # fmt: skip
    async with open_supervisor(max_restarts=5, name="root") as root:
        first = await root.start_child(inner)
        await root.start_child(workers.spec("sibling"))
        workers.take()
        workers.crash("x")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit x", "exit y", "start x", "start y"]
        workers.crash("x")  # the inner supervisor's second restart: it gives up
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit x", "exit y", "start x", "start y"]
        stats = root.statistics()
        inner_stats = stats.child("inner")
        assert inner_stats.last_exit.kind is ExitKind.ESCALATED
        assert inner_stats.last_exit.exception_type == "RestartIntensityExceeded"
        assert inner_stats.restarts == 1
        assert inner_stats.state is ChildState.RUNNING
        assert stats.child("sibling").runs == 1  # one_for_one: untouched
        second = root.which_children()[0].value
        assert second is not first
        assert first.state is SupervisorState.FAILED
        assert second.state is SupervisorState.RUNNING


async def test_escalation_climbs_until_a_supervisor_absorbs_it() -> None:
    workers = Workers()
    leaf = supervisor_spec("leaf", [workers.spec("x")], max_restarts=0)
    middle = supervisor_spec("middle", [leaf], max_restarts=0)
    with pytest.raises(RestartIntensityExceeded, match="'top'"):
        async with open_supervisor(max_restarts=0, name="top") as top:
            await top.start_child(middle)
            workers.crash("x")
            await trio.sleep_forever()
    assert top.statistics().child("middle").last_exit.kind is ExitKind.ESCALATED
