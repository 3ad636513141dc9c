"""The daemon's persistent state in SQLite (WAL): installed plugins, enabled flags, what
the operator granted each plugin's sandbox, and their history; the API's tokens (hashed)
live in the same file, kept by ``api/_auth.py`` through :meth:`StateStore.run`. One
writer at a time (a lock around a worker thread), so concurrent operations stay
consistent; the schema carries a version and migrates forward."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from .._core._sqlite import open_sqlite

_MIGRATIONS: list[str] = [
    # 1: plugins and their history
    """
    CREATE TABLE plugins (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        source TEXT NOT NULL,
        path TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        installed_at REAL NOT NULL
    );
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        plugin TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX history_by_plugin ON history (plugin, id);
    """,
    # 2: API tokens (only a hash of each secret is kept): api/_auth.py reads and writes it
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    """,
    # 3: what an install verified: its files' digests (JSON) and the key that signed it
    """
    ALTER TABLE plugins ADD COLUMN files TEXT;
    ALTER TABLE plugins ADD COLUMN signed_by TEXT;
    """,
    # 4: what the operator granted each plugin's sandbox (request strings: network:*:443)
    """
    CREATE TABLE grants (
        plugin TEXT NOT NULL,
        grant_text TEXT NOT NULL,
        granted_at REAL NOT NULL,
        PRIMARY KEY (plugin, grant_text)
    );
    """,
]


@attrs.frozen
class PluginRecord:
    name: str
    version: str
    source: str
    path: str | None
    enabled: bool
    installed_at: float
    files: Mapping[str, str] | None = None
    """The SHA-256 of each installed file (by its path in the plugin's folder), as the
    install verified them; None for a plugin that was not installed by the host."""
    signed_by: str | None = None
    """The key whose signature the install verified, if any."""


@attrs.frozen
class HistoryEntry:
    plugin: str
    at: float
    event: str
    detail: str


@attrs.define(eq=False)
class StateStore:
    """Open with :meth:`open`; every method is async and runs in a worker thread."""

    path: str
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> StateStore:
        store = cls(os.fspath(path))
        store._connection = await trio.to_thread.run_sync(store._connect)
        return store

    def _connect(self) -> sqlite3.Connection:
        # Migrated (or refused, untouched) before it switches to WAL.
        return open_sqlite(self.path, check=self._migrate)

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Read the schema version and migrate forward in one write transaction, so that
        two daemons opening one database never both migrate it."""
        with connection:
            connection.execute("BEGIN IMMEDIATE")
            has_table = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cws_schema'"
            ).fetchone()
            row = (
                connection.execute("SELECT version FROM cws_schema").fetchone()
                if has_table
                else None
            )
            version = row[0] if row else 0
            if version > len(_MIGRATIONS):
                # Refused before anything changed: the transaction rolls back.
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this cws-actors"
                    f" ({len(_MIGRATIONS)}); upgrade cws-actors"
                )
            if version == len(_MIGRATIONS) and has_table:
                return
            connection.execute("CREATE TABLE IF NOT EXISTS cws_schema (version INTEGER NOT NULL)")
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            connection.execute("DELETE FROM cws_schema")
            connection.execute("INSERT INTO cws_schema (version) VALUES (?)", (len(_MIGRATIONS),))

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(connection, *args)`` in a worker thread, one call at a time: how a
        layer above keeps tables of its own in this database (the API's tokens)."""
        if self._connection is None:
            raise RuntimeError("the state store is closed")
        async with self._lock:
            return await trio.to_thread.run_sync(function, self._connection, *args)

    async def schema_version(self) -> int:
        row = await self.run(lambda c: c.execute("SELECT version FROM cws_schema").fetchone())
        return int(row[0])

    async def record_install(
        self,
        name: str,
        version: str,
        source: str,
        path: str | None,
        *,
        files: Mapping[str, str] | None = None,
        signed_by: str | None = None,
    ) -> None:
        """Add or replace a plugin's record (keeping its enabled flag) and log it."""
        files_json = json.dumps(dict(files), sort_keys=True) if files is not None else None

        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "INSERT INTO plugins"
                    " (name, version, source, path, installed_at, files, signed_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                    " version = excluded.version, source = excluded.source,"
                    " path = excluded.path, installed_at = excluded.installed_at,"
                    " files = excluded.files, signed_by = excluded.signed_by",
                    (name, version, source, path, time.time(), files_json, signed_by),
                )
                _log(connection, name, "installed", f"{version} from {source}")

        await self.run(write)

    async def set_enabled(self, name: str, enabled: bool) -> None:
        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "INSERT INTO plugins (name, version, source, installed_at, enabled)"
                    " VALUES (?, '', 'discovered', ?, ?) ON CONFLICT (name) DO UPDATE SET"
                    " enabled = excluded.enabled",
                    (name, time.time(), int(enabled)),
                )
                _log(connection, name, "enabled" if enabled else "disabled")

        await self.run(write)

    async def forget(self, name: str) -> None:
        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("DELETE FROM plugins WHERE name = ?", (name,))
                connection.execute("DELETE FROM grants WHERE plugin = ?", (name,))
                _log(connection, name, "removed")

        await self.run(write)

    async def log(self, name: str, event: str, detail: str = "") -> None:
        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                _log(connection, name, event, detail)

        await self.run(write)

    async def plugins(self) -> dict[str, PluginRecord]:
        rows = await self.run(
            lambda c: c.execute(
                "SELECT name, version, source, path, enabled, installed_at, files, signed_by"
                " FROM plugins"
            ).fetchall()
        )
        return {
            row[0]: PluginRecord(
                row[0],
                row[1],
                row[2],
                row[3],
                bool(row[4]),
                row[5],
                json.loads(row[6]) if row[6] is not None else None,
                row[7],
            )
            for row in rows
        }

    async def grants(self, name: str) -> tuple[str, ...]:
        """What the operator granted ``name`` (request strings), in a stable order."""
        rows = await self.run(
            lambda c: c.execute(
                "SELECT grant_text FROM grants WHERE plugin = ? ORDER BY grant_text", (name,)
            ).fetchall()
        )
        return tuple(row[0] for row in rows)

    async def set_grants(self, name: str, grants: tuple[str, ...] | list[str], why: str) -> None:
        """Replace what ``name`` is granted with ``grants`` and log it (``why``: granted,
        revoked, installed...) in its history, in one transaction."""

        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                before = {
                    row[0]
                    for row in connection.execute(
                        "SELECT grant_text FROM grants WHERE plugin = ?", (name,)
                    )
                }
                connection.execute("DELETE FROM grants WHERE plugin = ?", (name,))
                now = time.time()
                connection.executemany(
                    "INSERT INTO grants (plugin, grant_text, granted_at) VALUES (?, ?, ?)",
                    [(name, grant, now) for grant in dict.fromkeys(grants)],
                )
                added = [g for g in dict.fromkeys(grants) if g not in before]
                removed = sorted(before - set(grants))
                if added:
                    _log(connection, name, "granted", f"{why}: {', '.join(added)}")
                if removed:
                    _log(connection, name, "revoked", f"{why}: {', '.join(removed)}")

        await self.run(write)

    async def history(self, name: str, limit: int = 100) -> list[HistoryEntry]:
        rows = await self.run(
            lambda c: c.execute(
                "SELECT plugin, at, event, detail FROM history WHERE plugin = ?"
                " ORDER BY id DESC LIMIT ?",
                (name, limit),
            ).fetchall()
        )
        return [HistoryEntry(*row) for row in reversed(rows)]

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            async with self._lock:
                await trio.to_thread.run_sync(connection.close)


def _log(connection: sqlite3.Connection, name: str, event: str, detail: str = "") -> None:
    connection.execute(
        "INSERT INTO history (plugin, at, event, detail) VALUES (?, ?, ?, ?)",
        (name, time.time(), event, detail),
    )
