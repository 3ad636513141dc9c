"""Durable events: an SQLite (WAL) log of events and of who has acknowledged them.

Writes go through a worker thread (``trio.to_thread``), one at a time; the event loop
never blocks on the disk. The schema keeps one row per event and one per (event,
subscriber) delivery, so that redelivery after a crash is a single indexed query.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import trio

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
"""


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
    Redis Streams) can stand in for it without any change to actors."""

    async def append(
        self, topic: str, payload: Any, source: str | None, subscribers: Sequence[str]
    ) -> StoredEvent: ...

    async def ack(self, event_id: int, subscriber: str) -> None: ...

    async def unacked(self, subscriber: str) -> list[StoredEvent]: ...

    async def aclose(self) -> None: ...


@attrs.define(eq=False)
class SQLiteEventStore:
    """The embedded event store: one SQLite file in WAL mode, ``synchronous=FULL`` so
    that an event ``append`` returned is on disk even if the process is killed."""

    path: str
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SQLiteEventStore:
        store = cls(os.fspath(path))
        store._connection = await trio.to_thread.run_sync(store._connect)
        return store

    def _connect(self) -> sqlite3.Connection:
        fresh = not os.path.exists(self.path)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if fresh:
            os.chmod(self.path, 0o600)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(_SCHEMA)
        return connection

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

        Raises:
            TypeError: the payload cannot be stored as JSON.
        """
        try:
            text = json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a durable event's payload must be JSON-serializable: {exc}") from None
        published_at = trio.current_time()
        event_id = await self._run(_append, topic, text, source, published_at, list(subscribers))
        return StoredEvent(event_id, topic, payload, source, published_at)

    async def ack(self, event_id: int, subscriber: str) -> None:
        await self._run(_ack, event_id, subscriber)

    async def unacked(self, subscriber: str) -> list[StoredEvent]:
        """The subscriber's unacknowledged events, oldest first."""
        rows = await self._run(_unacked, subscriber)
        return [StoredEvent(row[0], row[1], json.loads(row[2]), row[3], row[4]) for row in rows]

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await trio.to_thread.run_sync(connection.close)


def _append(
    connection: sqlite3.Connection,
    topic: str,
    payload: str,
    source: str | None,
    published_at: float,
    subscribers: list[str],
) -> int:
    with connection:  # one transaction: the event and its deliveries, or nothing
        connection.execute("BEGIN IMMEDIATE")
        cursor = connection.execute(
            "INSERT INTO events (topic, payload, source, published_at) VALUES (?, ?, ?, ?)",
            (topic, payload, source, published_at),
        )
        event_id = cursor.lastrowid
        connection.executemany(
            "INSERT INTO deliveries (event_id, subscriber) VALUES (?, ?)",
            [(event_id, subscriber) for subscriber in subscribers],
        )
    assert event_id is not None
    return event_id


def _ack(connection: sqlite3.Connection, event_id: int, subscriber: str) -> None:
    connection.execute(
        "UPDATE deliveries SET acked = 1 WHERE event_id = ? AND subscriber = ?",
        (event_id, subscriber),
    )


def _unacked(connection: sqlite3.Connection, subscriber: str) -> list[tuple[Any, ...]]:
    return connection.execute(
        "SELECT e.id, e.topic, e.payload, e.source, e.published_at"
        " FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.subscriber = ? AND d.acked = 0 ORDER BY e.id",
        (subscriber,),
    ).fetchall()
