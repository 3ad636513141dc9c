"""Durable events: stored before publish returns, acknowledged after the handler,
redelivered after a crash of the actor or of the whole runtime (issue 3, rule 7)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from cws_actors import Actor, Event, RuntimeConfig, on_event, open_runtime


class Ledger(Actor):
    """Records every delivery; crashes on the first delivery of a payload 'poison'."""

    def __init__(self, seen: list[tuple[int, Any]], want: int, done: trio.Event) -> None:
        self.seen, self.want, self.done = seen, want, done

    @on_event("orders.*")
    async def order(self, event: Event) -> None:
        self.seen.append((event.id, event.payload))
        if event.payload == "poison" and [p for _, p in self.seen].count("poison") == 1:
            raise RuntimeError("poisoned")
        if len(self.seen) >= self.want:
            self.done.set()


def config(path: Path) -> RuntimeConfig:
    return RuntimeConfig(state_path=str(path), durable_topics=("orders.*",))


def unacked_rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT event_id, subscriber FROM deliveries WHERE acked = 0 ORDER BY event_id"
        ).fetchall()


async def test_a_durable_event_is_on_disk_when_publish_returns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(10):
        async with open_runtime(config=config(path)) as runtime:
            event = await runtime.publish("orders.created", {"id": 7})
            assert event.durable
            with sqlite3.connect(path) as connection:
                rows = connection.execute("SELECT id, topic, payload FROM events").fetchall()
            assert rows == [(event.id, "orders.created", '{"id": 7}')]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_publish_nowait_refuses_a_durable_topic(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_runtime(config=config(tmp_path / "s.db")) as runtime:
            with pytest.raises(ValueError, match="durable: use `await publish"):
                runtime.publish_nowait("orders.created", 1)
            with pytest.raises(TypeError, match="JSON-serializable"):
                await runtime.publish("orders.created", object())
            runtime.publish_nowait("other.topic", 1)  # not durable: fine


async def test_durable_topics_need_a_state_path() -> None:
    with pytest.raises(ValueError, match="needs an event store"):
        async with open_runtime(config=RuntimeConfig(durable_topics=("orders.*",))):
            pass


async def test_a_crash_in_the_handler_redelivers_the_event_after_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    seen: list[tuple[int, Any]] = []
    done = trio.Event()
    with trio.fail_after(10):
        async with open_runtime(config=config(path)) as runtime:
            await runtime.spawn(lambda: Ledger(seen, 4, done), name="ledger")
            first = await runtime.publish("orders.created", "ok")
            poison = await runtime.publish("orders.created", "poison")
            last = await runtime.publish("orders.created", "after")
            await done.wait()
            # The poisoned event comes back with the same id after the actor restarts.
            assert sorted(seen) == sorted(
                [(first.id, "ok"), (poison.id, "poison"), (poison.id, "poison"),
                 (last.id, "after")]
            )  # fmt: skip
            assert runtime.actors().find("/ledger").restarts == 1
    assert unacked_rows(path) == []  # a handled event's ack is written even at shutdown


async def test_unacknowledged_events_survive_a_runtime_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    gate_never = trio.Event()

    class Stuck(Actor):
        @on_event("orders.*")
        async def order(self, event: Event) -> None:
            await gate_never.wait()

    with trio.fail_after(10):
        async with open_runtime(config=config(path)) as runtime:
            await runtime.spawn(Stuck, name="ledger")
            published = [await runtime.publish("orders.created", n) for n in range(3)]
    assert [row[0] for row in unacked_rows(path)] == [e.id for e in published]

    seen: list[tuple[int, Any]] = []
    done = trio.Event()
    with trio.fail_after(10):
        async with open_runtime(config=config(path)) as runtime:
            await runtime.spawn(lambda: Ledger(seen, 3, done), name="ledger")
            await done.wait()
            assert seen == [(e.id, n) for n, e in enumerate(published)]
    assert unacked_rows(path) == []


async def test_the_bus_keeps_recent_non_durable_events_and_the_store_all_durable_ones(
    tmp_path: Path,
) -> None:
    """What a reader who reconnects missed: ``bus.history`` (bounded, non-durable only,
    saying when it no longer reaches back) and ``store.events_after`` (every durable
    event, across runs)."""
    path = tmp_path / "state.db"
    settings = RuntimeConfig(state_path=str(path), durable_topics=("orders.*",), event_history=2)
    async with open_runtime(config=settings) as runtime:
        bus = runtime.bus
        first = bus.publish_nowait("jobs.a")
        kept, complete = bus.history.since(0)
        assert (kept, complete) == ([first], False)  # ids before this run: unknown
        durable = await runtime.publish("orders.created", {"n": 1})
        second, third = bus.publish_nowait("jobs.b"), bus.publish_nowait("jobs.c")
        assert bus.history.since(first.id - 1) == ([second, third], False)  # first evicted
        assert bus.history.since(first.id) == ([second, third], True)
        assert bus.history.since(third.id) == ([], True)
        assert bus.store is not None
        (stored,) = await bus.store.events_after(first.id, limit=10)
        assert (stored.id, stored.topic, stored.payload) == (durable.id, "orders.created", {"n": 1})
    async with open_runtime(config=settings) as runtime:
        assert runtime.bus.history.since(third.id) == ([], False)  # a new run
        assert runtime.bus.store is not None
        assert [e.id for e in await runtime.bus.store.events_after(0, limit=10)] == [durable.id]
