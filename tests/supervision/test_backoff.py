"""Rule 4: jittered exponential backoff, its reset, and quarantine."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from supervision import (
    Backoff,
    ChildQuarantined,
    ChildState,
    Jitter,
    OnExhausted,
    SupervisorState,
    open_supervisor,
)

from ._workers import Workers


def test_backoff_cap_grows_exponentially_up_to_the_maximum() -> None:
    backoff = Backoff(0.1, 5.0, multiplier=3.0)
    assert [backoff.cap(n) for n in range(6)] == pytest.approx([0.1, 0.3, 0.9, 2.7, 5.0, 5.0])
    assert backoff.cap(10_000) == 5.0  # no overflow for long crash loops


def test_full_jitter_draws_uniformly_below_the_cap() -> None:
    backoff = Backoff(1.0, 8.0)
    rng = random.Random(7)
    for attempt in range(6):
        draws = [backoff.delay(attempt, rng) for _ in range(2000)]
        cap = backoff.cap(attempt)
        assert 0 <= min(draws) < 0.05 * cap
        assert 0.95 * cap < max(draws) <= cap
        assert sum(draws) / len(draws) == pytest.approx(cap / 2, rel=0.08)


def test_other_jitters() -> None:
    rng = random.Random(1)
    assert Backoff(1.0, 8.0, jitter=Jitter.NONE).delay(2, rng) == 4.0
    equal = [Backoff(1.0, 8.0, jitter=Jitter.EQUAL).delay(2, rng) for _ in range(500)]
    assert min(equal) >= 2.0
    assert max(equal) <= 4.0


async def crash_times(seed: int, crashes: int, backoff: Backoff) -> list[float]:
    """Crash a child ``crashes`` times; return the delay before each restart."""
    workers = Workers()
    delays = []
    async with open_supervisor(max_restarts=1000, rng=random.Random(seed)) as supervisor:
        await supervisor.start_child(workers.spec("a", backoff=backoff))
        for _ in range(crashes):
            crashed_at = trio.current_time()
            workers.crash("a")
            await trio.testing.wait_all_tasks_blocked()
            await supervisor.wait_ready("a")
            delays.append(trio.current_time() - crashed_at)
            assert supervisor.statistics().child("a").backoff == pytest.approx(delays[-1])
    return delays


async def test_restart_delays_follow_the_seeded_full_jitter_schedule(autojump_clock) -> None:
    backoff = Backoff(0.5, 10.0, reset_after=1000)
    delays = await crash_times(42, 8, backoff)
    expected_rng = random.Random(42)
    expected = [expected_rng.uniform(0, min(10.0, 0.5 * 2**n)) for n in range(8)]
    assert delays == pytest.approx(expected)
    assert await crash_times(42, 8, backoff) == pytest.approx(delays)  # same seed, same run
    assert await crash_times(43, 8, backoff) != pytest.approx(delays)


async def test_backoff_resets_after_a_stable_run(autojump_clock) -> None:
    workers = Workers()
    backoff = Backoff(1.0, 64.0, jitter=Jitter.NONE, reset_after=30)
    async with open_supervisor(max_restarts=100, period=1) as supervisor:
        await supervisor.start_child(workers.spec("a", backoff=backoff))
        observed = []
        for stable_for in (0, 0, 0, 29.9, 30, 0):
            await trio.sleep(stable_for)
            workers.crash("a")
            await trio.testing.wait_all_tasks_blocked()
            observed.append(supervisor.statistics().child("a").backoff)
            await supervisor.wait_ready("a")
        # 1, 2, 4, 8 (29.9 s is not yet stable), reset by 30 s: 1, then 2
        assert observed == [1.0, 2.0, 4.0, 8.0, 1.0, 2.0]


async def test_a_child_in_backoff_is_restarting_and_not_ready(autojump_clock) -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", backoff=Backoff(5, 5, jitter=Jitter.NONE)))
        workers.crash("a")
        await trio.sleep(4.9)
        child = supervisor.statistics().child("a")
        assert (child.state, child.ready) == (ChildState.RESTARTING, False)
        await trio.sleep(0.2)
        assert supervisor.statistics().child("a").state is ChildState.RUNNING


async def test_terminating_a_child_in_backoff_cancels_its_restart(autojump_clock) -> None:
    workers = Workers()
    async with open_supervisor() as supervisor:
        await supervisor.start_child(workers.spec("a", backoff=Backoff(5, 5, jitter=Jitter.NONE)))
        workers.crash("a")
        await trio.sleep(1)
        await supervisor.terminate_child("a")
        await trio.sleep(10)
        assert workers.take() == ["start a", "exit a"]
        assert supervisor.statistics().child("a").state is ChildState.STOPPED


async def test_quarantine_stops_only_the_exhausted_child(autojump_clock) -> None:
    workers = Workers()
    async with open_supervisor(max_restarts=2, period=10) as supervisor:
        await supervisor.start_child(workers.spec("flaky", on_exhausted=OnExhausted.QUARANTINE))
        await supervisor.start_child(workers.spec("steady"))
        for _ in range(3):
            workers.crash("flaky")
            await trio.testing.wait_all_tasks_blocked()
        stats = supervisor.statistics()
        assert stats.state is SupervisorState.RUNNING
        assert stats.child("flaky").state is ChildState.QUARANTINED
        assert stats.child("flaky").restarts == 2
        assert stats.restarts == 0  # a quarantining child's restarts are its own
        assert stats.child("steady").state is ChildState.RUNNING
        assert stats.child("steady").runs == 1
        with pytest.raises(ChildQuarantined, match="clear_quarantine"):
            await supervisor.wait_ready("flaky")
        await trio.sleep(100)
        assert supervisor.statistics().child("flaky").state is ChildState.QUARANTINED

        assert await supervisor.clear_quarantine("flaky") == "flaky"
        assert await supervisor.wait_ready("flaky") == "flaky"
        for _ in range(2):  # a fresh budget
            workers.crash("flaky")
            await trio.testing.wait_all_tasks_blocked()
        assert supervisor.statistics().child("flaky").state is ChildState.RUNNING
        with pytest.raises(ValueError, match="not quarantined"):
            await supervisor.clear_quarantine("flaky")
