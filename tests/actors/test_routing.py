"""The router's checks in order, rate limits, mailbox overflow and the control lane
(issue 3, rules 2, 4 and 5)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from cws_actors import (
    Actor,
    HealthProbe,
    MailboxConfig,
    MailboxFull,
    NotReady,
    Overflow,
    ProbeKind,
    RateLimit,
    RateLimited,
    Source,
    open_runtime,
)


class Sink(Actor):
    """Counts what it handles; 'hold' blocks it until released."""

    def __init__(self, log: list[Any], gate: trio.Event | None = None) -> None:
        self.log = log
        self.gate = gate
        self.ready = True

    async def receive(self, message: Any) -> Any:
        if message == "hold" and self.gate is not None:
            await self.gate.wait()
        self.log.append(message)
        return message

    async def readiness(self) -> bool:
        return self.ready


@pytest.mark.parametrize(("rate", "burst"), [(1, 1), (5, 10), (0.5, 3), (20, 1), (3, 7)])
async def test_token_bucket_admits_exactly_rate_times_t_plus_burst(
    autojump_clock, rate: float, burst: int
) -> None:
    log: list[Any] = []
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: Sink(log),
            name="sink",
            rate_limit=RateLimit(rate, burst),
            mailbox=MailboxConfig(100_000),
        )
        admitted = refused = 0
        steps = int(rate * 8 * 60)  # 8 attempts per token, over exactly 60 s
        for n in range(steps + 1):
            await trio.sleep_until(n * 60 / steps)
            try:
                ref.tell("m", source=Source.HTTP)
                admitted += 1
            except RateLimited:
                refused += 1
        assert admitted == rate * 60 + burst
        assert refused > 0


async def test_retry_after_is_the_true_time_until_the_next_token(autojump_clock) -> None:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(lambda: Sink([]), name="sink", rate_limit=RateLimit(4, 2))
        ref.tell(1)
        await trio.sleep(0.1)
        ref.tell(2)  # the bucket holds 0.4 tokens now
        with pytest.raises(RateLimited) as caught:
            ref.tell(3)
        assert caught.value.retry_after == pytest.approx(0.15)
        assert caught.value.policy == RateLimit(4, 2)
        await trio.sleep(caught.value.retry_after * 0.99)
        with pytest.raises(RateLimited):
            ref.tell(4)
        await trio.sleep(caught.value.retry_after * 0.02)
        ref.tell(5)


async def test_rate_limits_are_per_source_unless_told_otherwise(autojump_clock) -> None:
    async with open_runtime() as runtime:
        per_source = await runtime.spawn(lambda: Sink([]), name="a", rate_limit=RateLimit(1, 1))
        shared = await runtime.spawn(
            lambda: Sink([]), name="b", rate_limit=RateLimit(1, 1, per_source=False)
        )
        per_source.tell(1, source=Source.HTTP)
        per_source.tell(1, source=Source.CLI)  # its own bucket
        shared.tell(1, source=Source.HTTP)
        with pytest.raises(RateLimited):
            shared.tell(1, source=Source.CLI)


async def test_concurrency_cap(autojump_clock) -> None:
    gate = trio.Event()
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: Sink([], gate),
            name="sink",
            rate_limit=RateLimit(1000, 1000, max_concurrent=2),
        )
        ref.tell("hold")
        ref.tell("queued")
        with pytest.raises(RateLimited, match="2 in flight"):
            ref.tell("third")
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        ref.tell("now fine")


async def test_not_ready_actor_is_out_of_routing_until_it_passes(autojump_clock) -> None:
    actor = Sink([])
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: actor,
            name="sink",
            probes=[HealthProbe(ProbeKind.READINESS, period=1, failure_threshold=1)],
        )
        await trio.sleep(0.5)
        ref.tell("ok")
        actor.ready = False
        await trio.sleep(1)
        with pytest.raises(NotReady) as caught:
            ref.tell("refused")
        assert caught.value.retry_after > 0
        assert runtime.actors().find("/sink").ready is False
        actor.ready = True
        await trio.sleep(1)
        ref.tell("ok again")


async def test_router_checks_readiness_before_the_rate_limit(autojump_clock) -> None:
    actor = Sink([])
    actor.ready = False
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: actor,
            name="sink",
            rate_limit=RateLimit(1, 1),
            probes=[HealthProbe(ProbeKind.READINESS, period=1, failure_threshold=1)],
        )
        for _ in range(3):
            with pytest.raises(NotReady):
                ref.tell("x")
        actor.ready = True
        await trio.sleep(1.5)
        ref.tell("the token was not spent by refused messages")


async def fill(ref: Any, gate_message: str, count: int) -> None:
    ref.tell(gate_message)
    await trio.testing.wait_all_tasks_blocked()  # the actor holds "hold"; the rest queue
    for n in range(count):
        ref.tell(n)


async def test_reject_overflow(autojump_clock) -> None:
    gate = trio.Event()
    log: list[Any] = []
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: Sink(log, gate), name="sink", mailbox=MailboxConfig(3, Overflow.REJECT)
        )
        await fill(ref, "hold", 3)
        with pytest.raises(MailboxFull, match="full \\(3 messages\\)"):
            ref.tell(99)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["hold", 0, 1, 2]
        stats = runtime.actors().find("/sink").mailbox
        assert (stats.high_water, stats.delivered, stats.depth) == (3, 4, 0)


async def test_drop_newest_and_drop_oldest(autojump_clock) -> None:
    gate = trio.Event()
    newest: list[Any] = []
    oldest: list[Any] = []
    async with open_runtime() as runtime:
        a = await runtime.spawn(
            lambda: Sink(newest, gate), name="a", mailbox=MailboxConfig(2, Overflow.DROP_NEWEST)
        )
        b = await runtime.spawn(
            lambda: Sink(oldest, gate), name="b", mailbox=MailboxConfig(2, Overflow.DROP_OLDEST)
        )
        await fill(a, "hold", 4)
        await fill(b, "hold", 2)
        evicted_ask = None
        async with trio.open_nursery() as nursery:

            async def ask_then_be_evicted() -> None:
                nonlocal evicted_ask
                with pytest.raises(MailboxFull):
                    await b.ask("asked", timeout=100)
                evicted_ask = trio.current_time()

            b.tell("x")  # [0, 1] -> [1, x]
            nursery.start_soon(ask_then_be_evicted)  # -> [x, asked]
            await trio.testing.wait_all_tasks_blocked()
            b.tell("y")  # -> [asked, y]
            b.tell("z")  # -> [y, z]: the asker hears MailboxFull
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert newest == ["hold", 0, 1]
        assert oldest == ["hold", "y", "z"]
        assert evicted_ask == 0.0
        dropped = [(d.envelope.target, d.envelope.payload) for d in runtime.dead_letters()]
        assert dropped == [("/a", 2), ("/a", 3), ("/b", 0), ("/b", 1), ("/b", "x"), ("/b", "asked")]
        assert runtime.actors().find("/a").mailbox.dropped == {"mailbox_full": 2}


async def test_block_overflow_makes_send_wait_for_room(autojump_clock) -> None:
    gate = trio.Event()
    log: list[Any] = []
    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            lambda: Sink(log, gate), name="sink", mailbox=MailboxConfig(1, Overflow.BLOCK)
        )
        await fill(ref, "hold", 1)
        with pytest.raises(MailboxFull):
            ref.tell("tell never waits")
        with pytest.raises(MailboxFull):
            await ref.send("gives up at its deadline", timeout=2)
        assert trio.current_time() == 2.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.send, "waits")
            await trio.sleep(3)
            gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["hold", 0, "waits"]


async def test_control_lane_lets_probes_pass_a_full_backlog(autojump_clock) -> None:
    class Slow(Actor):
        async def receive(self, message: Any) -> None:
            await trio.sleep(1)

    async with open_runtime() as runtime:
        ref = await runtime.spawn(
            Slow,
            name="slow",
            mailbox=MailboxConfig(100),
            probes=[HealthProbe(ProbeKind.LIVENESS, period=2, timeout=1.5)],
        )
        for n in range(100):
            ref.tell(n)
        await trio.sleep(30)
        node = runtime.actors().find("/slow")
        assert node.restarts == 0  # liveness answered between two messages each time
        (probe,) = node.probes
        assert probe.consecutive_failures == 0
        assert probe.checks == 15


async def test_routing_statistics_count_what_was_routed_refused_and_answered_late(
    autojump_clock,
) -> None:
    log: list[Any] = []
    async with open_runtime() as runtime:
        ref = await runtime.spawn(lambda: Sink(log), name="sink", rate_limit=RateLimit(1, 2))
        for _ in range(3):
            with contextlib.suppress(RateLimited):
                ref.tell("m")
        await trio.testing.wait_all_tasks_blocked()
        stats = runtime.routing_statistics()
        assert stats.routed == {"/sink": 2}
        assert stats.rejected == {("/sink", "rate_limited"): 1}
        assert stats.late == {}
        assert log == ["m", "m"]
