"""Removing a folder tree whatever its depth.

Python 3.11's ``shutil.rmtree`` recurses once per level, so a tree deeper than the
interpreter's recursion limit (about 1,000 levels: an archive can make one) raises
``RecursionError``, which ``ignore_errors`` does not catch. :func:`remove_tree` walks
down and back up with a list of names instead of the call stack, and works relative to
one open folder descriptor at a time, so that neither the depth, nor a path longer than
``PATH_MAX``, nor the per-process limit on open files stops it. It never follows a
symbolic link: a link is removed, not what it points to.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it; nothing to do if it does not exist.

    Raises:
        OSError: an entry could not be removed (what was removed before stays removed).
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        os.unlink(path)
        return
    fd = os.open(path, _OPEN_DIR)
    names: list[str] = []  # the folders from ``path`` down to where ``fd`` is
    try:
        while True:
            child = _empty_files_and_find_a_folder(fd)
            if child is not None:  # go down into it
                down = os.open(child, _OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = down
                names.append(child)
                continue
            if not names:
                break
            # Empty: go up, and remove it from its parent.
            up = os.open("..", _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _empty_files_and_find_a_folder(fd: int) -> str | None:
    """Unlink every entry of the folder open as ``fd`` that is not a folder; return the
    name of one sub-folder left, or ``None`` when the folder is now empty."""
    folder = None
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folder = folder or entry.name
            else:
                os.unlink(entry.name, dir_fd=fd)
    return folder
