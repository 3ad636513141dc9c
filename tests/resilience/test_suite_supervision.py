"""Supervision under injected faults, on in-process actors with Trio's mock clock:
seeded crash storms, escalation past a small intensity, a hung handler caught by its
liveness probe, and a crash loop quarantined while its sibling keeps answering."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from cws_actors import (
    Actor,
    ActorError,
    HandlerFailed,
    HealthProbe,
    OnExhausted,
    ProbeKind,
    Runtime,
    RuntimeConfig,
    open_runtime,
)
from cws_actors.faults import InjectedFault


class Echo(Actor):
    """Answers what it got."""

    async def receive(self, message: Any) -> Any:
        return message


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of this Trio run, walked from the root task."""
    found: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


def node(runtime: Runtime, path: str) -> Any:
    return runtime.actors().find(path)


# ---------------------------------------------------------------------- crash storm


async def test_a_thousand_seeded_crashes_over_fifty_actors(autojump_clock: Any) -> None:
    await trio.testing.wait_all_tasks_blocked()
    before = all_tasks()
    crashes: dict[str, int] = {}
    config = RuntimeConfig(fault_seed=1234)
    async with open_runtime(config=config) as runtime:
        group = await runtime.spawn_supervisor("w", max_restarts=10_000, period=60.0)
        refs = [await runtime.spawn(Echo, name=f"a{i}", parent=group) for i in range(50)]
        record = runtime.faults.inject("/w/*", "crash:0.5")
        during = all_tasks() - before
        assert "cws_actors ask timers" in {task.name for task in during}  # seen by the check
        assert len(during) > 50  # one task per actor at least
        asks = 0
        causes: set[type[BaseException]] = set()
        while sum(crashes.values()) < 1000:
            ref = refs[asks % 50]
            asks += 1
            try:
                assert await ref.ask(asks, timeout=5) == asks
            except HandlerFailed as exc:
                causes.add(type(exc.exception))
                crashes[ref.path] = crashes.get(ref.path, 0) + 1
            await trio.testing.wait_all_tasks_blocked()  # let the restart finish
        assert causes == {InjectedFault}  # every failure was an injected crash
        assert 1700 <= asks <= 2300  # about half the asks crashed
        tree = runtime.actors()
        supervisor = tree.find("/w")
        assert (supervisor.state, supervisor.restarts) == ("running", 0)  # no escalation
        assert len(supervisor.children) == 50
        for child in supervisor.children:
            assert (child.state, child.ready) == ("running", True), child.path
            assert child.restarts == crashes.get(child.path, 0), child.path
            assert "InjectedFault" in (child.last_exit or "")
        assert sum(c.restarts for c in supervisor.children) == 1000
        assert len(crashes) == 50  # every actor crashed at least once
        assert runtime.faults.get(record.id).fired == 1000
        runtime.faults.clear()
        for ref in refs:  # every permanent actor answers after the storm
            assert await ref.ask("ok", timeout=1) == "ok"
    await trio.testing.wait_all_tasks_blocked()
    assert all_tasks() == before  # nothing the runtime started outlives it


async def test_a_storm_replays_with_the_same_seed(autojump_clock: Any) -> None:
    async def storm(seed: int) -> list[int]:
        async with open_runtime(config=RuntimeConfig(fault_seed=seed)) as runtime:
            group = await runtime.spawn_supervisor("w", max_restarts=1000, period=60.0)
            refs = [await runtime.spawn(Echo, name=f"a{i}", parent=group) for i in range(10)]
            runtime.faults.inject("/w/*", "crash:0.5")
            for i in range(200):
                try:
                    await refs[i % 10].ask(i, timeout=5)
                except HandlerFailed:
                    pass
                await trio.testing.wait_all_tasks_blocked()
            return [c.restarts for c in runtime.actors().find("/w").children]

    first = await storm(99)
    assert first == await storm(99)
    assert first != await storm(100)
    assert 70 <= sum(first) <= 130


async def test_exceeding_a_small_intensity_escalates_to_the_parent(autojump_clock: Any) -> None:
    await trio.testing.wait_all_tasks_blocked()
    before = all_tasks()
    async with open_runtime(config=RuntimeConfig(fault_seed=5)) as runtime:
        group = await runtime.spawn_supervisor("w", max_restarts=2, period=10.0)
        ref = await runtime.spawn(Echo, name="a", parent=group, on_exhausted=OnExhausted.ESCALATE)
        sibling = await runtime.spawn(Echo, name="b", parent=group)
        runtime.faults.inject("/w/a", "crash:1.0 times 3")
        for expected_restarts in (1, 2):  # within the budget: /w/a alone restarts
            with pytest.raises(HandlerFailed):
                await ref.ask("boom", timeout=1)
            await trio.testing.wait_all_tasks_blocked()
            assert node(runtime, "/w/a").restarts == expected_restarts
            assert node(runtime, "/w").restarts == 0
        with pytest.raises(HandlerFailed):  # the third restart in 10 s is one too many
            await ref.ask("boom", timeout=1)
        await trio.testing.wait_all_tasks_blocked()
        supervisor = node(runtime, "/w")
        assert supervisor.restarts == 1  # /w failed and the root restarted it
        assert (supervisor.last_exit or "").startswith("escalated: RestartIntensityExceeded")
        assert "3 restarts within 10s (last failing child: 'a')" in (supervisor.last_exit or "")
        for path in ("/w/a", "/w/b"):  # the restarted subtree started both children afresh
            child = node(runtime, path)
            assert (child.state, child.ready, child.restarts) == ("running", True, 0), path
        assert await ref.ask("again", timeout=1) == "again"
        assert await sibling.ask("sib", timeout=1) == "sib"
        assert node(runtime, "/").restarts == 0
    await trio.testing.wait_all_tasks_blocked()
    assert all_tasks() == before


# ---------------------------------------------------------------------- a hung handler


async def test_a_hung_handler_is_restarted_within_the_liveness_bound(autojump_clock: Any) -> None:
    period, timeout, threshold = 2.0, 0.5, 3
    probe = HealthProbe(ProbeKind.LIVENESS, period=period, timeout=timeout,
                        failure_threshold=threshold)  # fmt: skip
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Echo, name="a", probes=[probe])
        await trio.sleep(0.3)  # off the probe's tick
        runtime.faults.inject("/a", "hang times 1")
        began = trio.current_time()
        with pytest.raises(ActorError):  # cancelled by the restart
            await ref.ask("stuck", timeout=60)
        took = trio.current_time() - began
        assert took <= threshold * period + timeout
        assert took >= (threshold - 1) * period + timeout  # it took `threshold` failures
        await runtime.wait_ready("/a")
        snapshot = node(runtime, "/a")
        assert (snapshot.restarts, snapshot.state) == (1, "running")
        assert "liveness" in (snapshot.last_exit or "")
        assert await ref.ask("after", timeout=1) == "after"


# ---------------------------------------------------------------------- a crash loop


async def test_a_crash_loop_is_quarantined_while_its_sibling_answers(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=3)) as runtime:
        group = await runtime.spawn_supervisor("q", max_restarts=3, period=30.0)
        looping = await runtime.spawn(Echo, name="loop", parent=group)
        sibling = await runtime.spawn(Echo, name="sib", parent=group)
        runtime.faults.inject("/q/loop", "crash:1.0")
        failures, answers = 0, 0
        while node(runtime, "/q/loop").state != "quarantined":
            assert failures < 20, "never quarantined"
            with pytest.raises(ActorError):
                await looping.ask("boom", timeout=1)
            failures += 1
            assert await sibling.ask(failures, timeout=1) == failures
            answers += 1
            await trio.testing.wait_all_tasks_blocked()
            assert await sibling.ask("between", timeout=1) == "between"
        assert failures == 4  # 3 restarts allowed, the 4th crash exhausts the budget
        loop, sib, supervisor = (node(runtime, p) for p in ("/q/loop", "/q/sib", "/q"))
        assert (loop.restarts, loop.ready) == (3, False)
        assert (sib.state, sib.ready, sib.restarts) == ("running", True, 0)
        assert (supervisor.state, supervisor.restarts) == ("running", 0)
        with pytest.raises(ActorError):  # a quarantined actor refuses, fast
            await looping.ask("still?", timeout=1)
        for i in range(50):
            assert await sibling.ask(i, timeout=1) == i
        runtime.faults.clear()
        await runtime.clear_quarantine("/q/loop")
        await runtime.wait_ready("/q/loop")
        assert await looping.ask("back", timeout=1) == "back"
        assert node(runtime, "/q/loop").state == "running"
