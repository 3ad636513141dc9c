"""Envelopes, tell and ask, crashes under asks, stash, deadlines (issue 3, rules 1 and 3)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from cws_actors import (
    Actor,
    ActorNotFound,
    ActorRestarting,
    ActorStopped,
    AskTimeout,
    Backoff,
    DeadlineExceeded,
    HandlerFailed,
    MailboxConfig,
    Source,
    open_runtime,
)
from supervision import Jitter


class Recorder(Actor):
    """Replies with what it saw of the envelope; 'boom' crashes it; 'slow' takes 10 s."""

    starts = 0

    async def on_start(self) -> None:
        Recorder.starts += 1

    async def receive(self, message: Any) -> Any:
        envelope = self.envelope
        if message == "boom":
            raise ValueError("boom")
        if message == "slow":
            await trio.sleep(10)
        if message == "never":
            await trio.sleep_forever()
        return {
            "message": message,
            "source": envelope.source,
            "correlation_id": envelope.correlation_id,
            "time_left": envelope.time_left(),
            "target": envelope.target,
        }


async def test_handler_sees_its_envelope_and_the_deadline_travels(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Recorder, name="rec")
        seen = await ref.ask("hi", timeout=7, source=Source.HTTP, correlation_id="req-1")
        assert seen == {
            "message": "hi",
            "source": Source.HTTP,
            "correlation_id": "req-1",
            "time_left": 7.0,
            "target": "/rec",
        }
        assert ref.path == "/rec"
        assert runtime.lookup("/rec") == ref


async def test_an_ask_whose_deadline_passed_fails_at_once(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Recorder, name="rec")
        with pytest.raises(DeadlineExceeded):
            await ref.ask("late", timeout=0)
        assert trio.current_time() == 0.0


async def test_an_envelope_that_expires_in_the_mailbox_is_a_dead_letter(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Recorder, name="rec")
        ref.tell("slow")
        ref.tell("stale", timeout=5)
        await trio.sleep(11)
        (letter,) = runtime.dead_letters()
        assert (letter.reason, letter.envelope.payload) == ("expired", "stale")


async def test_no_ask_hangs_past_its_deadline(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Recorder, name="rec")
        with pytest.raises(AskTimeout, match="within 3s"):
            await ref.ask("never", timeout=3)
        assert trio.current_time() == 3.0


async def test_a_crash_fails_the_ask_in_flight_and_the_actor_restarts(autojump_clock) -> None:
    Recorder.starts = 0
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Recorder, name="rec")
        with pytest.raises(HandlerFailed, match="ValueError: boom") as caught:
            await ref.ask("boom")
        assert isinstance(caught.value.exception, ValueError)
        assert caught.value.__cause__ is caught.value.exception
        await trio.testing.wait_all_tasks_blocked()
        assert Recorder.starts == 2
        assert (await ref.ask("after"))["message"] == "after"
        node = runtime.actors().find("/rec")
        assert (node.restarts, node.last_exit) == (1, "exception: ValueError: boom")


async def test_asks_during_a_restart_fail_fast(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Recorder, name="rec", backoff=Backoff(5, 5, jitter=Jitter.NONE))
        with pytest.raises(HandlerFailed):
            await ref.ask("boom")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ActorRestarting):
            await ref.ask("during")
        assert trio.current_time() == 0.0  # failed fast
        await trio.sleep(5)
        await trio.testing.wait_all_tasks_blocked()
        assert (await ref.ask("after"))["message"] == "after"


async def test_stashed_asks_are_delivered_after_the_restart(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            Recorder,
            name="rec",
            backoff=Backoff(5, 5, jitter=Jitter.NONE),
            mailbox=MailboxConfig(stash=2),
        )
        with pytest.raises(HandlerFailed):
            await ref.ask("boom")
        await trio.testing.wait_all_tasks_blocked()
        replies = []

        async def ask(message: str) -> None:
            replies.append((await ref.ask(message, timeout=10))["message"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "one")
            nursery.start_soon(ask, "two")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ActorRestarting):  # the stash holds two
                await ref.ask("three")
        assert sorted(replies) == ["one", "two"]
        assert trio.current_time() == 5.0


async def test_unknown_and_stopped_targets(autojump_clock) -> None:
    async with open_runtime() as runtime:
        with pytest.raises(ActorNotFound, match="no actor at '/ghost'"):
            runtime.lookup("/ghost")
        ref = await runtime.spawn(Recorder, name="rec")
        ref.tell("slow")
        ref.tell("queued")
        asked: list[BaseException] = []

        async def ask_queued() -> None:
            try:
                await ref.ask("queued ask", timeout=math.inf)
            except ActorStopped as exc:
                asked.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_queued)
            await trio.testing.wait_all_tasks_blocked()
            await runtime.stop("/rec")
        assert len(asked) == 1
        with pytest.raises(ActorStopped):
            ref.tell("after stop")
        reasons = [(d.reason, d.envelope.payload) for d in runtime.dead_letters()]
        assert reasons == [("stopped", "queued"), ("stopped", "queued ask")]
        with pytest.raises(ActorNotFound):
            runtime.lookup("/rec")


async def test_an_exception_in_the_runtime_body_comes_out_as_itself() -> None:
    with pytest.raises(KeyError):
        async with open_runtime() as runtime:
            await runtime.spawn(Recorder, name="rec")
            raise KeyError("mine")


async def test_stopping_a_restarting_actor_does_not_wait_for_it(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            Recorder, name="rec", backoff=Backoff(50, 50, jitter=Jitter.NONE), shutdown=5
        )
        with pytest.raises(HandlerFailed):
            await ref.ask("boom")
        await trio.testing.wait_all_tasks_blocked()
        await runtime.stop("/rec")
        assert trio.current_time() == 0.0
        with pytest.raises(ActorStopped):
            ref.tell("x")
