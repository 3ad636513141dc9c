"""The plugin's own SQLite file (WAL): one row per lifecycle event it has recorded.

Every query runs in a worker thread (``trio.to_thread``), one at a time; the event loop
never waits on the disk. The row's ``(event_id, published_at)`` is unique: a redelivered
event (the bus delivers at least once) is recognised and recorded once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import attrs
import trio

from cws_actors import open_sqlite

from ._usage import UsageEvent

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER NOT NULL,
    published_at REAL NOT NULL,
    topic TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    instance_type TEXT,
    provider TEXT,
    at REAL NOT NULL,
    UNIQUE (event_id, published_at)
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage_events (at);
"""


class StoreError(Exception):
    """The analytics database cannot be opened, read or written; the message says why."""


@attrs.frozen
class StoreCounts:
    """What the database holds."""

    events: int
    instances: int


@attrs.define(eq=False)
class UsageStore:
    """Open with :meth:`open`; close with :meth:`aclose`."""

    path: Path
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    @classmethod
    async def open(cls, path: Path) -> UsageStore:
        """Open (creating it with mode 0600) the database at ``path``.

        Raises:
            StoreError: it cannot be opened or is not an analytics database.
        """
        store = cls(path)
        store._connection = await trio.to_thread.run_sync(_connect, path)
        return store

    async def record(self, event_id: int, published_at: float, event: UsageEvent) -> bool:
        """Record one event; False when it was recorded before (a redelivery)."""
        return await self._run(_insert, event_id, published_at, event)

    async def events_until(self, end: float) -> list[UsageEvent]:
        """Every recorded event up to ``end`` (epoch seconds), oldest first."""
        return await self._run(_select_until, end)

    async def counts(self) -> StoreCounts:
        return await self._run(_counts)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await trio.to_thread.run_sync(connection.close)

    async def _run(self, query: Callable[[sqlite3.Connection, *_Ts], _T], *args: *_Ts) -> _T:
        if self._connection is None:
            raise StoreError(f"the analytics database {self.path} is closed")
        connection = self._connection
        async with self._lock:
            # Not abandoned on cancellation: a write in flight finishes, then we raise.
            return await trio.to_thread.run_sync(_translated, query, connection, *args)


def _translated(query: Callable[..., _T], connection: sqlite3.Connection, *args: object) -> _T:
    try:
        return query(connection, *args)
    except sqlite3.Error as exc:
        raise StoreError(f"the analytics database failed: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # Private (0600) from its creation, WAL, synchronous=FULL: the host's own way.
        connection = open_sqlite(path)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the analytics database {path}: {exc}") from exc
    try:
        connection.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(f"cannot use the analytics database {path}: {exc}") from exc
    return connection


def _insert(
    connection: sqlite3.Connection, event_id: int, published_at: float, event: UsageEvent
) -> bool:
    cursor = connection.execute(
        "INSERT OR IGNORE INTO usage_events"
        " (event_id, published_at, topic, instance_id, instance_type, provider, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event_id,
            published_at,
            event.topic,
            event.instance_id,
            event.instance_type,
            event.provider,
            event.at,
        ),
    )
    return cursor.rowcount == 1


def _select_until(connection: sqlite3.Connection, end: float) -> list[UsageEvent]:
    rows = connection.execute(
        "SELECT instance_id, topic, at, instance_type, provider FROM usage_events"
        " WHERE at <= ? ORDER BY at, seq",
        (end,),
    ).fetchall()
    return [UsageEvent(*row) for row in rows]


def _counts(connection: sqlite3.Connection) -> StoreCounts:
    events, instances = connection.execute(
        "SELECT COUNT(*), COUNT(DISTINCT instance_id) FROM usage_events"
    ).fetchone()
    return StoreCounts(events, instances)
