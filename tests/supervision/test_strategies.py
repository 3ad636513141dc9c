"""Rules 1 and 2: which children a restart involves, in what order, by restart type."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from supervision import (
    Backoff,
    ChildNotFound,
    ChildRunning,
    ChildState,
    ExitKind,
    Restart,
    Strategy,
    open_supervisor,
)

from ._workers import Workers


async def start_abc(supervisor, workers: Workers, **options) -> None:
    for child_id in "abc":
        await supervisor.start_child(workers.spec(child_id, **options))


async def test_children_start_in_order_and_stop_in_reverse_order() -> None:
    workers = Workers()
    async with open_supervisor(max_restarts=10) as supervisor:
        await start_abc(supervisor, workers)
        assert workers.take() == ["start a", "start b", "start c"]
        assert [c.id for c in supervisor.which_children()] == ["a", "b", "c"]
        assert [c.value for c in supervisor.which_children()] == ["a", "b", "c"]
    assert workers.take() == ["exit c", "exit b", "exit a"]
    assert {c.state for c in supervisor.which_children()} == {ChildState.STOPPED}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, ["exit b", "start b"]),
        (Strategy.ONE_FOR_ALL, ["exit b", "exit c", "exit a", "start a", "start b", "start c"]),
        (Strategy.REST_FOR_ONE, ["exit b", "exit c", "start b", "start c"]),
    ],
)
async def test_strategy_restarts_exactly_the_children_otp_restarts(
    strategy: Strategy, expected: list[str]
) -> None:
    workers = Workers()
    async with open_supervisor(strategy=strategy, max_restarts=10) as supervisor:
        await start_abc(supervisor, workers)
        workers.take()
        workers.crash("b")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == expected
        restarted = {e.split()[1] for e in expected if e.startswith("start")}
        stats = supervisor.statistics()
        assert stats.restarts == 1  # a group restart is one restart toward the intensity
        for child in stats.children:
            assert child.state is ChildState.RUNNING
            assert child.restarts == (1 if child.id in restarted else 0)
            assert child.runs == (2 if child.id in restarted else 1)
        assert stats.child("b").last_exit.kind is ExitKind.EXCEPTION


async def test_rest_for_one_on_the_last_child_restarts_only_it() -> None:
    workers = Workers()
    async with open_supervisor(strategy=Strategy.REST_FOR_ONE) as supervisor:
        await start_abc(supervisor, workers)
        workers.take()
        workers.crash("c")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit c", "start c"]


async def test_permanent_child_is_restarted_after_a_normal_return() -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", restart=Restart.PERMANENT))
        workers.finish("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["start a", "exit a", "start a"]
        assert supervisor.statistics().child("a").last_exit.kind is ExitKind.NORMAL


async def test_transient_child_is_restarted_only_after_an_abnormal_exit() -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", restart=Restart.TRANSIENT))
        workers.crash("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["start a", "exit a", "start a"]
        workers.finish("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit a"]
        child = supervisor.statistics().child("a")
        assert child.state is ChildState.STOPPED
        assert child.last_exit.kind is ExitKind.NORMAL


async def test_transient_child_cancelled_from_outside_is_not_restarted() -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", restart=Restart.TRANSIENT))
        await supervisor.terminate_child("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["start a", "exit a"]
        child = supervisor.statistics().child("a")
        assert child.state is ChildState.STOPPED
        assert child.last_exit.kind is ExitKind.CANCELLED
        assert child.restarts == 0


async def test_temporary_child_is_never_restarted_and_is_removed() -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("t", restart=Restart.TEMPORARY))
        workers.crash("t")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["start t", "exit t"]
        assert supervisor.which_children() == ()


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_temporary_sibling_is_not_restarted_by_a_group_restart(strategy: Strategy) -> None:
    workers = Workers()
    async with open_supervisor(strategy=strategy) as supervisor:
        await supervisor.start_child(workers.spec("a"))
        await supervisor.start_child(workers.spec("t", restart=Restart.TEMPORARY))
        await supervisor.start_child(workers.spec("c"))
        workers.take()
        workers.crash("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit a", "exit c", "exit t", "start a", "start c"]
        assert [c.id for c in supervisor.which_children()] == ["a", "c"]


async def test_group_restart_also_starts_a_stopped_sibling_as_otp_does() -> None:
    # OTP's start_children starts every child of the list, including one stopped by
    # terminate_child; delete_child is how an operator keeps one out.
    workers = Workers()
    async with open_supervisor(strategy=Strategy.ONE_FOR_ALL) as supervisor:
        await start_abc(supervisor, workers)
        await supervisor.terminate_child("c")
        workers.take()
        workers.crash("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit a", "exit b", "start a", "start b", "start c"]


async def test_restart_delete_and_which_children() -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await start_abc(supervisor, workers)
        workers.take()
        assert await supervisor.restart_child("b") == "b"
        assert workers.take() == ["exit b", "start b"]
        assert supervisor.statistics().child("b").restarts == 0  # manual: not counted
        assert supervisor.statistics().restarts == 0
        await supervisor.remove_child("a")
        assert workers.take() == ["exit a"]
        assert [c.id for c in supervisor.which_children()] == ["b", "c"]
        await supervisor.terminate_child("c")
        assert await supervisor.restart_child("c") == "c"
        assert workers.take() == ["exit c", "start c"]


async def test_delete_child_refuses_a_running_child_as_otp_does() -> None:
    workers = Workers()
    async with open_supervisor(name="sup", strategy=Strategy.ONE_FOR_ALL) as supervisor:
        await start_abc(supervisor, workers)
        workers.take()
        with pytest.raises(ChildRunning, match="it is running; stop it with terminate_child"):
            await supervisor.delete_child("b")
        assert workers.take() == []  # refused: nothing stopped, nothing forgotten
        assert [c.id for c in supervisor.which_children()] == ["a", "b", "c"]
        await supervisor.terminate_child("b")
        await supervisor.delete_child("b")
        assert workers.take() == ["exit b"]
        # Deleted, it stays out of a group restart, and its id is free.
        workers.crash("a")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.take() == ["exit a", "exit c", "start a", "start c"]
        with pytest.raises(ChildNotFound):
            await supervisor.delete_child("b")
        await supervisor.start_child(workers.spec("b"))
        assert workers.take() == ["start b"]


async def test_delete_child_refuses_a_child_waiting_to_restart(autojump_clock) -> None:
    workers = Workers()
    async with open_supervisor(name="sup") as supervisor:
        await supervisor.start_child(workers.spec("a", backoff=Backoff(10.0, 10.0)))
        workers.crash("a")
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.child_status("a") == (ChildState.RESTARTING, False)
        with pytest.raises(ChildRunning, match="it is restarting"):
            await supervisor.delete_child("a")
        await supervisor.remove_child("a")
        assert supervisor.which_children() == ()
        await trio.sleep(20)  # past the backoff: the removed child does not come back
        assert workers.take() == ["start a", "exit a"]
