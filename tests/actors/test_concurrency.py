"""Concurrency inside an actor: max_concurrency, groups, cancellation, order (issue 17)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

from cws_actors import (
    Actor,
    ActorRestarting,
    AskTimeout,
    Event,
    HandlerFailed,
    HealthProbe,
    MailboxConfig,
    MailboxFull,
    ProbeKind,
    on_event,
    open_runtime,
)


class Worker(Actor):
    """("sleep", s) sleeps s seconds; "boom" crashes; "never" waits forever. Records
    when each handler started and how each ended."""

    max_concurrency = 3
    started: ClassVar[list[tuple[Any, float]]] = []
    cancelled: ClassVar[list[Any]] = []
    starts = 0

    async def on_start(self) -> None:
        Worker.starts += 1

    async def receive(self, message: Any) -> Any:
        Worker.started.append((message, trio.current_time()))
        try:
            if message == "boom":
                await trio.sleep(0.5)
                raise ValueError("boom")
            if message == "never":
                await trio.sleep_forever()
            if isinstance(message, tuple) and message[0] == "sleep":
                await trio.sleep(message[1])
        except trio.Cancelled:
            Worker.cancelled.append(message)
            raise
        return message


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Worker.started, Worker.cancelled, Worker.starts = [], [], 0


async def test_n_handlers_overlap_and_the_next_one_waits(autojump_clock) -> None:
    finished: dict[int, float] = {}
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w")

        async def ask(i: int) -> None:
            await ref.ask(("sleep", 1), timeout=10)
            finished[i] = trio.current_time()

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(ask, i)
                await trio.testing.wait_all_tasks_blocked()
    # Three at once, done after 1 s; the fourth waited for a slot and took 1 s more.
    assert sorted(finished.values()) == [1.0, 1.0, 1.0, 2.0]
    assert [at for _, at in Worker.started] == [0.0, 0.0, 0.0, 1.0]


async def test_spawn_overrides_the_class_and_refuses_nonsense(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w", max_concurrency=1)
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(ref.ask, ("sleep", 1))
        assert trio.current_time() == 2.0  # one at a time
        with pytest.raises(ValueError, match="max_concurrency must be a whole number"):
            await runtime.spawn(Worker, name="bad", max_concurrency=0)
    with pytest.raises(TypeError, match=r"Bad\.max_concurrency must be a whole number"):

        class Bad(Actor):
            max_concurrency = 0


async def test_a_crash_in_one_handler_cancels_the_others_and_restarts_once(
    autojump_clock,
) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w")
        outcomes: dict[str, BaseException] = {}

        async def ask(message: str) -> None:
            try:
                await ref.ask(message, timeout=10)
            except Exception as exc:
                outcomes[message + str(len(outcomes))] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "never")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "never")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "boom")
        kinds = sorted(type(exc).__name__ for exc in outcomes.values())
        assert kinds == ["ActorRestarting", "ActorRestarting", "HandlerFailed"]
        assert Worker.cancelled == ["never", "never"]
        await trio.testing.wait_all_tasks_blocked()
        assert Worker.starts == 2  # one restart for the one crash
        assert await ref.ask(("sleep", 0)) == ("sleep", 0)


async def test_a_cancelled_or_timed_out_ask_cancels_its_handler(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w")
        with trio.move_on_after(1):
            await ref.ask("never", timeout=60)
        await trio.testing.wait_all_tasks_blocked()
        assert Worker.cancelled == ["never"]  # the asker gave up: so did the handler
        with pytest.raises(AskTimeout):
            await ref.ask(("sleep", 30), timeout=2)
        await trio.testing.wait_all_tasks_blocked()
        assert Worker.cancelled == ["never", ("sleep", 30)]
        assert Worker.starts == 1  # neither is a crash
        assert await ref.ask(("sleep", 0)) == ("sleep", 0)


class Subscriber(Actor):
    max_concurrency = 8
    seen: ClassVar[list[int]] = []

    @on_event("job.*")
    async def on_job(self, event: Event) -> None:
        # Later events are quicker: handled concurrently they would finish reversed.
        await trio.sleep(1.0 / event.payload)
        Subscriber.seen.append(event.payload)


async def test_bus_events_reach_one_subscriber_in_order(autojump_clock) -> None:
    Subscriber.seen = []
    async with open_runtime() as runtime:
        await runtime.spawn(Subscriber, name="sub")
        for i in range(1, 6):
            await runtime.bus.publish("job.done", i)
        await trio.sleep(10)
    assert Subscriber.seen == [1, 2, 3, 4, 5]


class Grouped(Actor):
    max_concurrency = 2
    concurrency_groups = MappingProxyType({"slow": 1})

    def concurrency_group(self, message: Any) -> str | None:
        return "slow" if message == "slow" else None

    async def receive(self, message: Any) -> Any:
        if message == "slow":
            await trio.sleep(100)
        return message


async def test_a_slow_group_delays_neither_another_group_nor_a_probe(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            Grouped,
            name="g",
            probes=[HealthProbe(ProbeKind.READINESS, period=1, timeout=0.5, failure_threshold=1)],
        )
        await runtime.wait_ready("/g")
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # one handled, two held by the full "slow" group
                nursery.start_soon(lambda: ref.ask("slow", timeout=1000))
            await trio.sleep(10)  # ten readiness probes while "slow" is busy
            start = trio.current_time()
            assert await ref.ask("fast") == "fast"  # ready, and not behind "slow"
            assert trio.current_time() == start
            nursery.cancel_scope.cancel()


async def test_an_unknown_group_crashes_like_a_handler_would(autojump_clock) -> None:
    class Lost(Grouped):
        def concurrency_group(self, message: Any) -> str | None:
            return "nowhere"

    async with open_runtime() as runtime:
        ref = await runtime.spawn(Lost, name="lost")
        with pytest.raises((ActorRestarting, HandlerFailed)):
            await ref.ask("x", timeout=5)


async def test_the_mailbox_bound_still_holds(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w", mailbox=MailboxConfig(capacity=2))
        for _ in range(3):
            ref.tell("never")  # taken by the three handlers
            await trio.testing.wait_all_tasks_blocked()
        ref.tell("never")
        ref.tell("never")  # two wait in the mailbox
        with pytest.raises(MailboxFull):
            ref.tell("never")
        assert len(Worker.started) == 3


class Lanes(Actor):
    max_concurrency = 2
    concurrency_groups = MappingProxyType({"one": 1})
    handled: ClassVar[list[Any]] = []

    def concurrency_group(self, message: Any) -> str | None:
        return "one" if message[0] == "one" else None

    async def receive(self, message: Any) -> Any:
        if message[1] == "boom":
            raise ValueError("boom")
        await trio.sleep(message[1])
        Lanes.handled.append(message)
        return message


async def test_messages_waiting_in_a_lane_survive_a_crash_in_order(autojump_clock) -> None:
    Lanes.handled = []
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Lanes, name="lanes")
        answers: list[Any] = []

        async def ask(message: Any) -> None:
            try:
                answers.append(await ref.ask(message, timeout=100))
            except Exception as exc:
                answers.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for message in [("one", 5), ("one", 1), ("one", 2)]:
                nursery.start_soon(ask, message)
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, ("any", "boom"))
        # The handler of ("one", 5) was cancelled by the crash; the two that waited in
        # the full lane went back to the mailbox and the next run handled them, in order.
        assert sorted(map(str, answers)) == sorted(
            ["ActorRestarting", "HandlerFailed", "('one', 1)", "('one', 2)"]
        )
        assert Lanes.handled == [("one", 1), ("one", 2)]


async def test_a_stop_lets_every_handler_in_flight_finish(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w", shutdown=10)
        answers: list[Any] = []

        async def ask(seconds: float) -> None:
            answers.append(await ref.ask(("sleep", seconds), timeout=100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 2)
            nursery.start_soon(ask, 3)
            await trio.testing.wait_all_tasks_blocked()
            await runtime.stop("/w")
        assert sorted(answers) == [("sleep", 2), ("sleep", 3)]
        assert trio.current_time() == 3.0


async def test_the_snapshot_shows_what_is_in_flight(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Worker, name="w", max_concurrency=4)
        for _ in range(6):
            ref.tell("never")
            await trio.testing.wait_all_tasks_blocked()
        node = runtime.actors().find("/w")
        assert (node.handling, node.max_concurrency, node.mailbox.depth) == (4, 4, 2)


class Unordered(Subscriber):
    def events_in_order(self, event: Event) -> bool:
        return False  # these may overlap: handled like direct messages


async def test_events_an_actor_does_not_need_in_order_are_handled_side_by_side(
    autojump_clock,
) -> None:
    Subscriber.seen = []
    async with open_runtime() as runtime:
        await runtime.spawn(Unordered, name="sub")
        for i in range(1, 6):
            await runtime.bus.publish("job.done", i)
        await trio.sleep(10)
    assert Subscriber.seen == [5, 4, 3, 2, 1]  # the quickest first: they overlapped
