"""One daemon per home: an advisory lock on ``$CWS_HOME/daemon.lock``.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on a file the daemon keeps open for as long as
it runs, so the kernel releases it when the holder dies, however it dies: a daemon
killed with SIGKILL never blocks the next one, and no stale pid file has to be judged.
The file also says who holds it (pid, URL, start time, as JSON), so that a second
daemon can name the first in its refusal. The file descriptor is not inherited by
plugin processes (Python opens files close-on-exec), so a plugin left behind cannot
keep the home locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

LOCK_NAME = "daemon.lock"


class HomeInUse(Exception):
    """Raised when another daemon holds the home; the message names its pid and URL."""


@attrs.define(eq=False)
class HomeLock:
    """The held lock; :meth:`announce` records the URL once the daemon serves."""

    path: Path
    _fd: int

    def announce(self, url: str | None) -> None:
        record = {"pid": os.getpid(), "url": url, "started_at": time.time()}
        data = json.dumps(record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as the file says it, for a message."""
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        record = {}
    pid = record.get("pid", "unknown")
    url = record.get("url") or "(still starting, not serving yet)"
    return f"pid {pid}, serving {url}"


@contextlib.contextmanager
def hold_home(home: Path) -> Iterator[HomeLock]:
    """Hold ``home`` for this process until the block ends.

    Raises:
        HomeInUse: another live process holds it.
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise HomeInUse(
                f"{home} is already served by another cws daemon ({holder(path)});"
                " stop it first, or give this one another home (--home or CWS_HOME)"
            ) from None
        lock = HomeLock(path, fd)
        lock.announce(None)
        yield lock
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race)
