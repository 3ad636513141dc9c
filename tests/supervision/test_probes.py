"""Rule 6: startup, liveness and readiness probes with Kubernetes semantics."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing

from supervision import ChildState, ExitKind, Probe, ProbeKind, open_supervisor

from ._workers import Workers


@attrs.define
class Health:
    """A check whose answer the test sets; it records when it was called."""

    answer: Any = True
    calls: list[float] = attrs.field(factory=list)
    hang: bool = False

    async def __call__(self) -> bool:
        self.calls.append(trio.current_time())
        if self.hang:
            await trio.sleep_forever()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return bool(self.answer)


async def test_startup_probe_gates_liveness_and_readiness(autojump_clock) -> None:
    startup, liveness, readiness = Health(False), Health(), Health()
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(
            workers.spec(
                "a",
                probes=[
                    Probe(ProbeKind.STARTUP, startup, period=1, failure_threshold=30),
                    Probe(ProbeKind.LIVENESS, liveness, period=1),
                    Probe(ProbeKind.READINESS, readiness, period=1),
                ],
            )
        )
        await trio.sleep(10.5)
        child = supervisor.statistics().child("a")
        assert (child.state, child.ready) == (ChildState.RUNNING, False)
        assert liveness.calls == readiness.calls == []
        startup.answer = True
        assert await supervisor.wait_ready("a") == "a"
        assert trio.current_time() == 11.0
        assert liveness.calls[0] == readiness.calls[0] == 11.0
        assert len(startup.calls) == 12  # it stops once passed


async def test_startup_probe_failing_restarts_the_child(autojump_clock) -> None:
    startup = Health(False)
    workers = Workers()
    async with open_supervisor(max_restarts=10) as supervisor:
        await supervisor.start_child(
            workers.spec("a", probes=[Probe(ProbeKind.STARTUP, startup, period=2)])
        )
        await trio.sleep(4.5)  # checks at 0, 2, 4: the third failure restarts it
        child = supervisor.statistics().child("a")
        assert child.runs == 2
        assert child.last_exit.kind is ExitKind.LIVENESS
        assert "startup probe failed 3 times" in child.last_exit.message


async def test_liveness_failures_in_a_row_restart_the_child(autojump_clock) -> None:
    liveness = Health()
    workers = Workers()
    probe = Probe(ProbeKind.LIVENESS, liveness, initial_delay=5, period=2, failure_threshold=3)
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", probes=[probe]))
        await trio.sleep(6)
        liveness.answer = False  # checks at 5 (pass), 7, 9, 11 (fail x3)
        await trio.sleep(4.5)
        assert supervisor.statistics().child("a").runs == 1
        await trio.sleep(1)
        child = supervisor.statistics().child("a")
        assert child.runs == 2
        assert child.restarts == 1
        assert child.last_exit.kind is ExitKind.LIVENESS
        assert child.last_exit.at == 11.0
        assert workers.take() == ["start a", "exit a", "start a"]


async def test_a_success_between_failures_resets_the_count(autojump_clock) -> None:
    liveness = Health()
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(
            workers.spec("a", probes=[Probe(ProbeKind.LIVENESS, liveness, period=1)])
        )
        await trio.sleep(0.5)  # answers change between checks, never at the same instant
        for answer in [False, False, True, False, False, True, False, False]:
            liveness.answer = answer
            await trio.sleep(1)
        assert supervisor.statistics().child("a").runs == 1


async def test_readiness_failure_clears_ready_without_a_restart(autojump_clock) -> None:
    readiness = Health()
    workers = Workers()
    probe = Probe(
        ProbeKind.READINESS, readiness, period=1, failure_threshold=2, success_threshold=3
    )
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", probes=[probe]))
        await supervisor.wait_ready("a")
        assert trio.current_time() == 2.0  # three successes: at 0, 1 and 2
        readiness.answer = False
        await trio.sleep(1.5)
        assert supervisor.statistics().child("a").ready  # one failure is not enough
        await trio.sleep(1)
        child = supervisor.statistics().child("a")
        assert (child.ready, child.state, child.runs) == (False, ChildState.RUNNING, 1)
        readiness.answer = True
        await trio.sleep(2)  # two successes of the three needed
        assert not supervisor.statistics().child("a").ready
        await trio.sleep(1)
        child = supervisor.statistics().child("a")
        assert (child.ready, child.runs) == (True, 1)
        (status,) = child.probes
        assert (status.kind, status.passing, status.consecutive_successes) == (
            ProbeKind.READINESS,
            True,
            3,
        )


async def test_raising_and_timing_out_checks_fail(autojump_clock) -> None:
    liveness = Health(answer=OSError("disk gone"))
    workers = Workers()
    probe = Probe(ProbeKind.LIVENESS, liveness, period=10, timeout=1, failure_threshold=2)
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", probes=[probe]))
        await trio.sleep(5)
        (status,) = supervisor.statistics().child("a").probes
        assert status.last_error == "OSError: disk gone"
        assert status.consecutive_failures == 1
        liveness.answer, liveness.hang = True, True
        await trio.sleep(6.5)  # the check at 10 hangs; at 11 it times out: 2nd failure
        child = supervisor.statistics().child("a")
        assert child.runs == 2
        assert child.last_exit.at == 11.0
        assert "timed out after 1s" in child.last_exit.message


async def test_sync_checks_work_too(autojump_clock) -> None:
    answers = iter([True, False, False, False])
    workers = Workers()
    probe = Probe(ProbeKind.LIVENESS, lambda: next(answers), period=1)
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", probes=[probe]))
        await trio.sleep(3.5)
        assert supervisor.statistics().child("a").last_exit.kind is ExitKind.LIVENESS


async def test_hung_child_is_restarted_by_liveness(autojump_clock) -> None:
    """A handler stuck forever: liveness catches it within threshold x period + timeout."""
    alive = trio.Event()
    runs = []

    async def hangs(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started()
        await trio.sleep_forever()  # stuck: never sets alive again

    async def check() -> None:
        with trio.fail_after(0.5):
            await alive.wait()

    from supervision import ChildSpec

    probe = Probe(ProbeKind.LIVENESS, check, period=2, timeout=1, failure_threshold=3)
    async with open_supervisor() as supervisor:
        await supervisor.start_child(ChildSpec("hung", hangs, probes=[probe]))
        await trio.sleep(3 * 2 + 1)
        assert len(runs) == 2
        assert runs[1] - runs[0] <= 3 * 2 + 1
