"""Rule 8: bad input fails at once, names the field, and changes nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from supervision import (
    Backoff,
    ChildNotFound,
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    Probe,
    ProbeKind,
    open_supervisor,
)

from ._workers import Workers


def sync_start(task_status: Any = None) -> None:
    pass


async def ok(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()


def test_start_must_be_async() -> None:
    with pytest.raises(TypeError, match=r"ChildSpec\.start must be an async function"):
        ChildSpec("a", sync_start)


def test_async_callables_are_accepted() -> None:
    import functools

    class Callable:
        async def __call__(self, task_status: Any = None) -> None: ...

    ChildSpec("a", functools.partial(ok))
    ChildSpec("a", Callable())


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: ChildSpec("", ok), ValueError, r"ChildSpec\.id must be a non-empty str"),
        (lambda: ChildSpec("a", ok, shutdown=0), ValueError, r"ChildSpec\.shutdown must be > 0"),
        (lambda: ChildSpec("a", ok, shutdown=-1), ValueError, r"shutdown must be > 0, got -1"),
        (lambda: ChildSpec("a", ok, restart="always"), TypeError, "restart"),
        (lambda: Probe(ProbeKind.LIVENESS, ok, period=0), ValueError, r"Probe\.period must be > 0"),
        (lambda: Probe(ProbeKind.LIVENESS, ok, timeout=-1), ValueError, r"Probe\.timeout"),
        (
            lambda: Probe(ProbeKind.LIVENESS, ok, failure_threshold=0),
            ValueError,
            r"Probe\.failure_threshold must be >= 1, got 0",
        ),
        (lambda: Probe(ProbeKind.LIVENESS, "yes"), TypeError, r"Probe\.check must be callable"),
        (lambda: Backoff(2, 1), ValueError, r"Backoff\.maximum must be >= initial"),
        (lambda: Backoff(-1, 1), ValueError, r"Backoff\.initial must be a finite number >= 0"),
        (lambda: Backoff(1, 2, multiplier=0.5), ValueError, r"Backoff\.multiplier must be >= 1"),
        (lambda: Backoff(1, 2, reset_after=0), ValueError, r"Backoff\.reset_after must be > 0"),
        (lambda: Backoff(1, math.nan), ValueError, "NaN"),
        (
            lambda: ChildSpec(
                "a", ok, probes=[Probe(ProbeKind.LIVENESS, ok), Probe(ProbeKind.LIVENESS, ok)]
            ),
            ValueError,
            "two liveness probes",
        ),
    ],
)
def test_bad_values_name_the_field(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_restarts": -1}, r"max_restarts must be >= 0, got -1"),
        ({"max_restarts": 1.5}, r"max_restarts must be an int"),
        ({"period": 0}, r"period must be > 0, got 0"),
        ({"period": -5}, r"period must be > 0, got -5"),
        ({"strategy": "one_for_one"}, r"strategy must be a Strategy"),
    ],
)
async def test_bad_supervisor_options_fail_before_anything_starts(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        async with open_supervisor(**options):
            pytest.fail("the body must not run")


async def test_duplicate_child_is_refused_and_the_original_keeps_running() -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a"))
        with pytest.raises(DuplicateChild, match="already has a child 'a'"):
            await supervisor.start_child(workers.spec("a"))
        assert workers.log == ["start a"]
        assert supervisor.statistics().child("a").runs == 1


async def test_a_child_failing_to_start_is_not_added() -> None:
    async def broken(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("no such device")

    async def forgetful(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        return

    async with open_supervisor() as supervisor:
        with pytest.raises(ChildStartFailed, match="OSError: no such device") as caught:
            await supervisor.start_child(ChildSpec("broken", broken))
        assert isinstance(caught.value.__cause__, OSError)
        with pytest.raises(ChildStartFailed, match=r"returned before calling .*started\(\)"):
            await supervisor.start_child(ChildSpec("forgetful", forgetful))
        assert supervisor.which_children() == ()
        with pytest.raises(TypeError, match="expects a ChildSpec"):
            await supervisor.start_child(ok)


async def test_unknown_child_ids_raise_child_not_found() -> None:
    async with open_supervisor(name="sup") as supervisor:
        for operation in (
            supervisor.terminate_child,
            supervisor.restart_child,
            supervisor.delete_child,
            supervisor.remove_child,
            supervisor.wait_ready,
            supervisor.clear_quarantine,
        ):
            with pytest.raises(ChildNotFound, match="supervisor 'sup' has no child 'ghost'"):
                await operation("ghost")


async def test_a_child_cannot_stop_itself_through_its_supervisor() -> None:
    result = []

    async def suicidal(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        supervisor = task_status_supervisor[0]
        task_status.started()
        try:
            await supervisor.terminate_child("self")
        except RuntimeError as exc:
            result.append(str(exc))
        await trio.sleep_forever()

    task_status_supervisor: list[Any] = []
    async with open_supervisor() as supervisor:
        task_status_supervisor.append(supervisor)
        await supervisor.start_child(ChildSpec("self", suicidal))
        await trio.testing.wait_all_tasks_blocked()
    assert result
    assert "cannot stop itself" in result[0]
