"""Event ids: one id space for durable and non-durable events, unique within a home and
increasing, across a clean close, an abandoned store and a SIGKILLed process (issue 14,
item 7)."""

from __future__ import annotations

import contextlib
import itertools
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from cws_actors import Event, RuntimeConfig, SQLiteEventStore, open_runtime


def config(path: Path | None = None) -> RuntimeConfig:
    if path is None:
        return RuntimeConfig()
    return RuntimeConfig(state_path=str(path), durable_topics=("orders.*",))


def reserved(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT reserved FROM event_ids").fetchone()[0])


def stored_ids(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM events ORDER BY id")]


def assert_strictly_increasing(ids: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(ids)), ids


async def publish_mix(path: Path | None, rounds: int) -> list[Event]:
    """Durable, awaited plain and ``publish_nowait`` plain events in turn; returns them
    as a ``subscribe("#")`` stream saw them."""
    seen: list[Event] = []
    async with open_runtime(config=config(path)) as runtime:
        with runtime.bus.subscribe("#", buffer=0) as stream:
            for n in range(rounds):
                if path is not None:
                    await runtime.publish("orders.created", n)
                await runtime.publish("news.posted", n)
                runtime.publish_nowait("news.posted", -n)
            while True:
                try:
                    seen.append(stream.receive_nowait())
                except trio.WouldBlock:
                    break
    return seen


async def test_the_same_id_never_appears_twice_on_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(10):
        seen = await publish_mix(path, 20)
    assert len(seen) == 60
    assert {e.durable for e in seen} == {True, False}
    ids = [e.id for e in seen]
    assert_strictly_increasing(ids)  # so unique: a durable 1 and a plain 1 were the bug
    # The durable ones are stored under the very ids that were delivered.
    assert stored_ids(path) == [e.id for e in seen if e.durable]
    assert reserved(path) >= max(ids)


async def test_without_a_state_file_ids_count_from_1_in_each_runtime() -> None:
    with trio.fail_after(10):
        first = await publish_mix(None, 10)
        second = await publish_mix(None, 10)
    assert [e.id for e in first] == list(range(1, 21))
    assert [e.id for e in second] == list(range(1, 21))  # unique per runtime only


async def test_ids_keep_increasing_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    runs = []
    with trio.fail_after(20):
        for _ in range(3):
            runs.append([e.id for e in await publish_mix(path, 5)])
    everything = [event_id for run in runs for event_id in run]
    assert_strictly_increasing(everything)
    assert len(everything) == 45


async def test_ids_keep_increasing_after_a_store_is_abandoned_open(tmp_path: Path) -> None:
    """A store that is never closed (its process died) holds ids that the file has
    reserved: whoever opens the file next starts after all of them. Small blocks, so
    that both reservations run: the synchronous one when a block runs out, and the
    early one inside a durable append."""
    path = tmp_path / "state.db"
    taken: list[int] = []
    with trio.fail_after(10):
        abandoned = await SQLiteEventStore.open(path, id_block=4)
        for n in range(30):
            if n % 5 == 4:
                taken.append((await abandoned.append("orders.created", n, None, ["/a"])).id)
            else:
                taken.append(abandoned.next_event_id())
            # The invariant that makes a crash harmless: every id handed out is reserved.
            assert reserved(path) >= taken[-1]
        successor = await SQLiteEventStore.open(path, id_block=4)  # `abandoned` still open
        try:
            later = [successor.next_event_id() for _ in range(10)]
            later.append((await successor.append("orders.created", "x", None, ["/a"])).id)
        finally:
            await successor.aclose()
            await abandoned.aclose()
    assert_strictly_increasing(taken + later)
    assert stored_ids(path) == [*taken[4::5], later[-1]]


async def test_a_state_file_from_before_id_reservations_continues_after_its_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(
            """
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                payload TEXT NOT NULL, source TEXT, published_at REAL NOT NULL
            );
            INSERT INTO events (id, topic, payload, published_at)
                VALUES (41, 'orders.created', '1', 0.0);
            """
        )
    with trio.fail_after(10):
        seen = await publish_mix(path, 2)
    assert seen[0].id > 41
    assert stored_ids(path)[0] == 41


async def test_id_block_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="id_block must be an int >= 2, got 1"):
        await SQLiteEventStore.open(tmp_path / "state.db", id_block=1)


# A process that numbers events for ever (every third one durable, blocks of 5 ids so
# that reservations happen all the time) and prints each id once it has it.
CHILD = textwrap.dedent(
    """
    import sys

    import trio

    from cws_actors import EventBus, SQLiteEventStore


    async def main(path):
        store = await SQLiteEventStore.open(path, id_block=5)
        bus = EventBus(lambda path, event: None, lambda event, reason: None, store=store)
        bus.declare_durable("orders.*")
        n = 0
        while True:
            if n % 3 == 0:
                event = await bus.publish("orders.created", n)
            else:
                event = bus.publish_nowait("news.posted", n)
                await trio.lowlevel.checkpoint()
            print(event.id, int(event.durable), flush=True)
            n += 1


    trio.run(main, sys.argv[1])
    """
)


async def test_ids_keep_increasing_after_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    printed: list[tuple[int, bool]] = []
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(30):
            while len(printed) < 300:
                chunk = await process.stdout.receive_some()
                assert chunk, "the child exited before numbering 300 events"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                printed += [(int(i), d == b"1") for i, d in (line.split() for line in lines)]
            process.send_signal(signal.SIGKILL)  # in the middle of its loop
            assert await process.wait() == -signal.SIGKILL
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()

    ids = [event_id for event_id, _ in printed]
    assert_strictly_increasing(ids)
    durable = [event_id for event_id, is_durable in printed if is_durable]
    on_disk = stored_ids(path)
    # Every durable event it printed is stored under that id; at most one more (stored,
    # then killed before its line) is there too.
    assert on_disk[: len(durable)] == durable
    assert len(on_disk) - len(durable) in (0, 1)
    with trio.fail_after(10):
        after = await publish_mix(path, 3)
    assert min(e.id for e in after) > max([*ids, *on_disk])
    assert_strictly_increasing([e.id for e in after])
