"""Durable events: an SQLite (WAL) log of events and of who has acknowledged them,
and the allocator of event ids (durable or not) for the home the file belongs to.

Writes go through a worker thread (``trio.to_thread``), one at a time. The schema keeps
one row per event and one per (event, subscriber) delivery, so that redelivery after a
crash is one indexed query per page.

Event ids (hi/lo): the file records the highest id *reserved* so far. The store reserves
a block of ids (``id_block``, 10,000 by default) in one write, and hands them out from
memory: a non-durable event costs no write. On opening, the store reserves the block
after the recorded maximum, so ids keep increasing across restarts, clean or not (a
crash skips the rest of its block: ids are not contiguous). The next block is reserved
early, in the transaction of a durable event's append once half the block is used, and
only a run of non-durable events that uses a whole block without any durable one in its
second half pays a short synchronous write on the event loop, once per block. Two
processes sharing the file would get disjoint blocks (a reservation is one atomic
increment), so ids stay unique; one daemon per home keeps them increasing too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import trio

from ._sqlite import open_sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    source TEXT,
    published_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id INTEGER NOT NULL REFERENCES events(id),
    subscriber TEXT NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, subscriber)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS unacked ON deliveries (subscriber, acked, event_id);
CREATE TABLE IF NOT EXISTS event_ids (
    only INTEGER PRIMARY KEY CHECK (only = 0),
    reserved INTEGER NOT NULL
);
INSERT OR IGNORE INTO event_ids (only, reserved) VALUES (0, 0);
"""

# The highest id reserved so far; the first reservation of a file written before ids
# were reserved (events numbered by AUTOINCREMENT) starts after its events.
_RESERVE_FIRST = """
UPDATE event_ids SET reserved = max(
    reserved,
    (SELECT coalesce(max(id), 0) FROM events),
    (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events')
) + ? RETURNING reserved
"""
_RESERVE_NEXT = "UPDATE event_ids SET reserved = reserved + ? RETURNING reserved"

DEFAULT_ID_BLOCK = 10_000
"""How many event ids one write reserves (see the module docstring)."""


@attrs.frozen
class StoredEvent:
    """An event as the store keeps it."""

    id: int
    topic: str
    payload: Any
    source: str | None
    published_at: float


class EventStore(Protocol):
    """Where durable events live until every subscriber has acknowledged them.

    SQLiteEventStore is the embedded one; a broker's own persistence (JetStream,
    Redis Streams) can stand in for it without any change to actors.

    It also owns the event ids of its home: ``next_event_id`` numbers every event, durable
    or not, and ``append`` numbers a durable one from the same sequence. Ids are unique
    among all the events ever published with this store, and increasing in the order of
    the calls that take them, across restarts of the process."""

    def next_event_id(self) -> int: ...

    async def append(
        self, topic: str, payload: Any, source: str | None, subscribers: Sequence[str]
    ) -> StoredEvent: ...

    async def ack(self, event_id: int, subscriber: str) -> None: ...

    async def unacked(
        self, subscriber: str, *, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]: ...

    async def events_after(self, after: int, *, limit: int) -> list[StoredEvent]:
        """The stored events with an id above ``after``, oldest first, at most ``limit``
        (a page): what a reader who last saw ``after`` missed of the durable topics."""
        ...

    async def aclose(self) -> None: ...


@attrs.define(eq=False)
class _IdBlocks:
    """The reserved ids not handed out yet: disjoint ranges, lowest first.

    Blocks may come back out of order (a reservation made in an append's transaction
    returns after a synchronous one made meanwhile), so a block, or the part of it, below
    an id already handed out is dropped: ids only ever increase."""

    _next: int = 1
    _ranges: list[tuple[int, int]] = attrs.field(factory=list)

    def add(self, reserved: int, size: int) -> None:
        """Add the block that a reservation ending at ``reserved`` got."""
        first = max(reserved - size + 1, self._next)
        if first <= reserved:
            self._ranges.append((first, reserved))
            self._ranges.sort()

    def take(self) -> int | None:
        """The next id, or None when every reserved id has been handed out."""
        while self._ranges:
            first, last = self._ranges[0]
            event_id = max(first, self._next)
            if event_id <= last:
                self._next = event_id + 1
                return event_id
            del self._ranges[0]
        return None

    def remaining(self) -> int:
        return sum(max(0, last - max(first, self._next) + 1) for first, last in self._ranges)


@attrs.define(eq=False)
class SQLiteEventStore:
    """The embedded event store: one SQLite file in WAL mode, ``synchronous=FULL`` so
    that an event ``append`` returned is on disk even if the process is killed.

    It numbers every event of its home, durable or not (see :meth:`next_event_id`)."""

    path: str
    id_block: int = DEFAULT_ID_BLOCK
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _ids: _IdBlocks = attrs.field(factory=_IdBlocks, init=False)
    _topping_up: bool = attrs.field(default=False, init=False)
    # The synchronous reservation (when a block runs out with no append to top it up)
    # runs on the event loop's thread: it has its own connection, so that it never
    # lands inside the transaction of an append running in a worker thread.
    _reserver: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _reserver_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, id_block: int = DEFAULT_ID_BLOCK
    ) -> SQLiteEventStore:
        """Open (or create) the store at ``path`` and reserve its first block of ids.

        Raises:
            ValueError: ``id_block`` is below 2.
        """
        if not isinstance(id_block, int) or id_block < 2:
            raise ValueError(f"id_block must be an int >= 2, got {id_block!r}")
        store = cls(os.fspath(path), id_block)
        store._connection, reserved = await trio.to_thread.run_sync(store._connect)
        store._ids.add(reserved, id_block)
        return store

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        connection = open_sqlite(self.path, timeout=30.0)
        connection.executescript(_SCHEMA)
        with connection:
            connection.execute("BEGIN IMMEDIATE")
            (reserved,) = connection.execute(_RESERVE_FIRST, (self.id_block,)).fetchall()[0]
        self._reserver = open_sqlite(self.path, timeout=30.0)
        return connection, int(reserved)

    def next_event_id(self) -> int:
        """The next event id of this home, for a durable event or not.

        Unique among every event ever numbered from this file (durable or not, before or
        after any restart or crash), and bigger than every id handed out before it by
        this store. Costs no write, except once per ``id_block`` ids when no append came
        along to reserve the next block early (see the module docstring).

        Raises:
            RuntimeError: the store is closed and its last block is used up.
        """
        event_id = self._ids.take()
        if event_id is None:
            self._reserve_now()
            event_id = self._ids.take()
            assert event_id is not None
        return event_id

    def _reserve_now(self) -> None:
        with self._reserver_lock:
            if self._reserver is None:
                raise RuntimeError("the event store is closed: it cannot number more events")
            (reserved,) = self._reserver.execute(_RESERVE_NEXT, (self.id_block,)).fetchall()[0]
        self._ids.add(int(reserved), self.id_block)

    async def _run(self, function: Any, *args: Any) -> Any:
        if self._connection is None:
            raise RuntimeError("the event store is closed")
        async with self._lock:
            # Not abandoned on cancellation: a write in flight finishes, then we raise.
            return await trio.to_thread.run_sync(function, self._connection, *args)

    async def append(
        self, topic: str, payload: Any, source: str | None, subscribers: Sequence[str]
    ) -> StoredEvent:
        """Write the event and one pending delivery per subscriber, atomically.

        The event's id is taken when ``append`` is called, and appends are written in
        that order (the store's lock is fair), so the file never holds an event whose
        id is above one still to be written: a reader paging by id misses nothing.

        Raises:
            TypeError: the payload cannot be stored as JSON.
        """
        try:
            text = json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a durable event's payload must be JSON-serializable: {exc}") from None
        published_at = trio.current_time()
        event_id = self.next_event_id()
        top_up = 0
        if not self._topping_up and self._ids.remaining() < self.id_block // 2:
            top_up, self._topping_up = self.id_block, True
        try:
            reserved = await self._run(
                _append, event_id, topic, text, source, published_at, list(subscribers), top_up
            )
        finally:
            if top_up:
                self._topping_up = False
        if reserved is not None:
            self._ids.add(reserved, self.id_block)
        return StoredEvent(event_id, topic, payload, source, published_at)

    async def ack(self, event_id: int, subscriber: str) -> None:
        await self._run(_ack, event_id, subscriber)

    async def unacked(
        self, subscriber: str, *, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The subscriber's unacknowledged events with an id above ``after``, oldest
        first: all of them, or the first ``limit`` (a page)."""
        rows = await self._run(_unacked, subscriber, after, -1 if limit is None else limit)
        return [StoredEvent(row[0], row[1], json.loads(row[2]), row[3], row[4]) for row in rows]

    async def events_after(self, after: int, *, limit: int) -> list[StoredEvent]:
        """The stored events with an id above ``after``, oldest first, at most ``limit``
        (a page). Every durable event is kept, acknowledged or not."""
        rows = await self._run(_events_after, after, limit)
        return [StoredEvent(row[0], row[1], json.loads(row[2]), row[3], row[4]) for row in rows]

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await trio.to_thread.run_sync(connection.close)
        with self._reserver_lock:
            reserver, self._reserver = self._reserver, None
        if reserver is not None:
            reserver.close()


def _append(
    connection: sqlite3.Connection,
    event_id: int,
    topic: str,
    payload: str,
    source: str | None,
    published_at: float,
    subscribers: list[str],
    top_up: int,
) -> int | None:
    """Insert the event and its deliveries; with ``top_up``, reserve that many more ids
    in the same transaction and return the new reserved maximum."""
    reserved = None
    with connection:  # one transaction: the event and its deliveries, or nothing
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO events (id, topic, payload, source, published_at) VALUES (?, ?, ?, ?, ?)",
            (event_id, topic, payload, source, published_at),
        )
        connection.executemany(
            "INSERT INTO deliveries (event_id, subscriber) VALUES (?, ?)",
            [(event_id, subscriber) for subscriber in subscribers],
        )
        if top_up:
            (reserved,) = connection.execute(_RESERVE_NEXT, (top_up,)).fetchall()[0]
    return None if reserved is None else int(reserved)


def _ack(connection: sqlite3.Connection, event_id: int, subscriber: str) -> None:
    connection.execute(
        "UPDATE deliveries SET acked = 1 WHERE event_id = ? AND subscriber = ?",
        (event_id, subscriber),
    )


def _unacked(
    connection: sqlite3.Connection, subscriber: str, after: int, limit: int
) -> list[tuple[Any, ...]]:
    return connection.execute(
        "SELECT e.id, e.topic, e.payload, e.source, e.published_at"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.subscriber = ? AND d.acked = 0 AND d.event_id > ? ORDER BY d.event_id"
        " LIMIT ?",
        (subscriber, after, limit),
    ).fetchall()


def _events_after(connection: sqlite3.Connection, after: int, limit: int) -> list[tuple[Any, ...]]:
    return connection.execute(
        "SELECT id, topic, payload, source, published_at FROM events WHERE id > ?"
        " ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
