"""Isolation under injected faults, on in-process actors with Trio's mock clock: what
goes wrong in one actor or subtree leaves the others' state, answers and clock alone."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from cws_actors import (
    Actor,
    ActorError,
    HandlerFailed,
    OnExhausted,
    Runtime,
    RuntimeConfig,
    open_runtime,
)


class Counter(Actor):
    """Adds what it gets to a total that lives as long as one run of the actor."""

    async def on_start(self) -> None:
        self.total = 0

    async def receive(self, n: Any) -> Any:
        self.total += n
        return self.total


def node(runtime: Runtime, path: str) -> Any:
    return runtime.actors().find(path)


async def test_an_escalating_subtree_leaves_another_subtree_alone(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=8)) as runtime:
        bad = await runtime.spawn_supervisor("bad", max_restarts=1, period=10.0)
        good = await runtime.spawn_supervisor("good", max_restarts=1, period=10.0)
        doomed = await runtime.spawn(Counter, name="c", parent=bad,
                                     on_exhausted=OnExhausted.ESCALATE)  # fmt: skip
        kept = await runtime.spawn(Counter, name="c", parent=good)
        assert await kept.ask(5, timeout=1) == 5
        runtime.faults.inject("/bad/**", "crash:1.0 times 2")
        for _ in range(2):  # the second crash exceeds /bad's intensity: it escalates
            with pytest.raises(HandlerFailed):
                await doomed.ask(1, timeout=1)
            await trio.testing.wait_all_tasks_blocked()
        assert node(runtime, "/bad").restarts == 1
        assert (node(runtime, "/bad").last_exit or "").startswith("escalated:")
        assert node(runtime, "/good").restarts == node(runtime, "/good/c").restarts == 0
        assert await kept.ask(1, timeout=1) == 6  # its state survived the other's failure
        assert await doomed.ask(1, timeout=1) == 1  # the restarted one starts from zero


async def test_a_hung_actor_does_not_hold_up_its_siblings(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        hung = await runtime.spawn(Counter, name="hung")
        others = [await runtime.spawn(Counter, name=f"o{i}") for i in range(10)]
        runtime.faults.inject("/hung", "hang")
        outcome: list[str] = []

        async def ask_hung() -> None:
            try:
                await hung.ask(1, timeout=30)
            except ActorError as exc:
                outcome.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_hung)
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
            for round_ in range(1, 4):
                for ref in others:
                    assert await ref.ask(1, timeout=1) == round_
            assert trio.current_time() == began  # no waiting on the hung one
            assert outcome == []  # still hung
        assert outcome == ["AskTimeout"]
        assert trio.current_time() == pytest.approx(30.0)
        assert all(node(runtime, f"/o{i}").restarts == 0 for i in range(10))


async def test_a_fault_reaches_only_the_actors_its_target_names(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=21)) as runtime:
        group = await runtime.spawn_supervisor("g", max_restarts=1000, period=60.0)
        refs = {
            name: await runtime.spawn(Counter, name=name, parent=group)
            for name in ("a1", "a2", "b1", "b2")
        }
        runtime.faults.inject("/g/a?", "crash:0.5")
        crashed = {name: 0 for name in refs}
        for i in range(200):
            name = list(refs)[i % 4]
            try:
                await refs[name].ask(1, timeout=1)
            except HandlerFailed:
                crashed[name] += 1
            await trio.testing.wait_all_tasks_blocked()
        assert crashed["b1"] == crashed["b2"] == 0
        assert crashed["a1"] > 0
        assert crashed["a2"] > 0
        for name, count in crashed.items():
            assert node(runtime, f"/g/{name}").restarts == count
        assert await refs["b1"].ask(0, timeout=1) == 50  # never restarted: all 50 counted


async def test_a_quarantined_actor_costs_its_supervisor_nothing(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(max_restarts=2, period=60.0)) as runtime:
        looping = await runtime.spawn(Counter, name="loop")
        steady = await runtime.spawn(Counter, name="steady", on_exhausted=OnExhausted.ESCALATE)
        runtime.faults.inject("/loop", "crash:1.0")
        for _ in range(3):  # 2 restarts, then the third crash quarantines it
            with pytest.raises(HandlerFailed):
                await looping.ask(1, timeout=1)
            await trio.testing.wait_all_tasks_blocked()
        assert (node(runtime, "/loop").state, node(runtime, "/loop").restarts) == ("quarantined", 2)
        # /steady counts toward the root's intensity (2 in 60 s); /loop's restarts did
        # not, so two crashes of /steady fit in the budget and nothing escalates.
        runtime.faults.inject("/steady", "crash:1.0 times 2")
        for _ in range(2):
            with pytest.raises(HandlerFailed):
                await steady.ask(1, timeout=1)
            await trio.testing.wait_all_tasks_blocked()
        snapshot = node(runtime, "/steady")
        assert (snapshot.state, snapshot.ready, snapshot.restarts) == ("running", True, 2)
        assert node(runtime, "/").state == "running"
        assert await steady.ask(2, timeout=1) == 2
