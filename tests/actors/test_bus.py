"""The event bus: wildcards, routing through the router, order, slow subscribers and
dead letters on system.dead_letter (issue 3, rule 6)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from cws_actors import (
    Actor,
    ActorStopped,
    Event,
    HealthProbe,
    MailboxConfig,
    ProbeKind,
    RateLimit,
    on_event,
    open_runtime,
    topic_matches,
)


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("instance.*", "instance.started", True),
        ("instance.*", "instance", False),
        ("instance.*", "instance.a.b", False),
        ("*.terminated", "instance.terminated", True),
        ("*.terminated", "instance.stopped", False),
        ("#", "system.dead_letter", True),
        ("instance.#", "instance", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b", False),
    ],
)
def test_topic_wildcards(pattern: str, topic: str, matches: bool) -> None:
    assert topic_matches(pattern, topic) is matches


def test_bad_patterns_fail_at_class_definition() -> None:
    with pytest.raises(ValueError, match=r"bad topic pattern 'instance\.\.x'"):

        class Broken(Actor):
            @on_event("instance..x")
            async def handler(self, event: Event) -> None: ...


class Watcher(Actor):
    def __init__(self, seen: list[tuple[str, Any]], gate: trio.Event | None = None) -> None:
        self.seen = seen
        self.gate = gate

    @on_event("instance.*")
    async def instance(self, event: Event) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(("instance", event.payload))

    @on_event("*.terminated")
    async def terminated(self, event: Event) -> None:
        self.seen.append(("terminated", event.payload))


async def test_actors_receive_the_events_their_handlers_declare(autojump_clock) -> None:
    seen: list[tuple[str, Any]] = []
    async with open_runtime() as runtime:
        await runtime.spawn(lambda: Watcher(seen), name="watcher")
        for n, topic in enumerate(
            ["instance.started", "volume.terminated", "instance.terminated", "other.thing"]
        ):
            runtime.publish_nowait(topic, n)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [
            ("instance", 0),
            ("terminated", 1),
            ("instance", 2),
            ("terminated", 2),
        ]
        assert runtime.bus.subscribers("instance.launched") == ["/watcher"]


async def test_a_slow_subscriber_blocks_neither_publisher_nor_others(autojump_clock) -> None:
    slow_seen: list[tuple[str, Any]] = []
    fast_seen: list[tuple[str, Any]] = []
    gate = trio.Event()
    async with open_runtime() as runtime:
        await runtime.spawn(lambda: Watcher(slow_seen, gate), name="slow", mailbox=MailboxConfig(5))
        await runtime.spawn(lambda: Watcher(fast_seen), name="fast")
        for n in range(20):
            runtime.publish_nowait("instance.started", n)  # never waits
        await trio.testing.wait_all_tasks_blocked()
        assert fast_seen == [("instance", n) for n in range(20)]  # in order, all of them
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert slow_seen == [("instance", n) for n in range(5)]  # what its mailbox held
        letters = [d for d in runtime.dead_letters() if d.envelope.target == "/slow"]
        assert [d.envelope.payload.payload for d in letters] == list(range(5, 20))
        assert {d.reason for d in letters} == {"mailbox_full"}


async def test_events_respect_rate_limits_and_readiness(autojump_clock) -> None:
    seen: list[tuple[str, Any]] = []
    actor = Watcher(seen)
    async with open_runtime() as runtime:
        await runtime.spawn(lambda: actor, name="limited", rate_limit=RateLimit(1, 2))
        for n in range(4):
            runtime.publish_nowait("instance.started", n)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [("instance", 0), ("instance", 1)]
        reasons = [d.reason for d in runtime.dead_letters()]
        assert reasons == ["rate_limited", "rate_limited"]

        class Unready(Watcher):
            async def readiness(self) -> bool:
                return False

        await runtime.spawn(
            lambda: Unready([]),
            name="unready",
            probes=[HealthProbe(ProbeKind.READINESS, period=1)],
        )
        runtime.publish_nowait("x.terminated", "nobody ready")
        assert runtime.dead_letters()[-1].reason == "not_ready"


async def test_dead_letters_are_published_on_system_dead_letter(autojump_clock) -> None:
    async with open_runtime() as runtime:
        stream = runtime.bus.subscribe("system.dead_letter")
        with pytest.raises(LookupError):
            runtime.lookup("/ghost")
        await runtime.spawn(lambda: Watcher([]), name="w", mailbox=MailboxConfig(1))
        await runtime.stop("/w")
        with pytest.raises(ActorStopped):
            runtime.router.tell("/w", "late")
        gate = trio.Event()
        await runtime.spawn(lambda: Watcher([], gate), name="w2", mailbox=MailboxConfig(1))
        for n in range(3):
            runtime.publish_nowait("instance.started", n)
        await trio.testing.wait_all_tasks_blocked()
        event = stream.receive_nowait()
        assert event.topic == "system.dead_letter"
        assert event.payload["reason"] == "mailbox_full"
        assert event.payload["target"] == "/w2"
        stream.close()
        gate.set()


async def test_dead_letter_events_are_rate_limited(autojump_clock) -> None:
    from cws_actors import RuntimeConfig

    config = RuntimeConfig(dead_letter_events=RateLimit(1, 2))
    async with open_runtime(config=config) as runtime:
        stream = runtime.bus.subscribe("system.dead_letter")
        gate = trio.Event()
        await runtime.spawn(lambda: Watcher([], gate), name="w", mailbox=MailboxConfig(1))
        for n in range(6):
            runtime.publish_nowait("instance.started", n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(runtime.dead_letters()) == 5  # all logged...
        published = []
        while True:
            try:
                published.append(stream.receive_nowait())
            except trio.WouldBlock:
                break
        assert len(published) == 2  # ...but only the burst is published
        stream.close()
        gate.set()
