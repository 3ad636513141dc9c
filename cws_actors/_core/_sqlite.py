"""One way to open the SQLite files that must survive a crash (the plugin host's state,
the durable event store, a plugin's own data)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable


def open_sqlite(
    path: str | os.PathLike[str],
    *,
    timeout: float = 5.0,
    check: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path``, created if need be.

    The file is created private (0600) before SQLite opens it, so there is no moment
    when others could read it (its ``-wal`` and ``-shm`` files are made 0600 too). The
    connection is in WAL mode with ``synchronous=FULL`` (a committed transaction
    survives a power cut), in autocommit (``isolation_level=None``: transactions are
    explicit), and usable from Trio's worker threads one at a time
    (``check_same_thread=False``: the caller serialises its use). ``timeout`` is how long
    a write waits for another connection's lock. ``check`` runs first, before anything
    is written (switching to WAL rewrites the file's header): a file it refuses, by
    raising, is left exactly as it was.

    Raises:
        OSError: the file cannot be created.
        sqlite3.Error: it is not a usable SQLite database.
        Exception: whatever ``check`` raises.
    """
    path = os.fspath(path)
    # O_CREAT without O_EXCL: an existing file keeps its content (and its mode).
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    connection = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=timeout
    )
    try:
        if check is not None:
            check(connection)
        # WAL cannot be switched on inside a transaction; it persists in the file.
        _switch_to_wal(connection, timeout)
        connection.execute("PRAGMA synchronous=FULL")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path + suffix, 0o600)
    except BaseException:
        connection.close()
        raise
    return connection


def _switch_to_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock it
    needs: SQLite answers "database is locked" at once there, without waiting as its
    busy timeout does for reads and writes (seen with eight daemons opening one new
    file on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
