"""Processes as /proc shows them: state, parent and start time, so that a recycled pid is
never mistaken for the process it once named."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import attrs
import trio


@attrs.frozen
class Proc:
    pid: int
    state: str
    """``R``, ``S``, ``Z`` (a zombie: exited, not reaped) and so on."""
    ppid: int
    start: int
    """Clock ticks after boot: with the pid, it names one process for good."""

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)


def proc(pid: int) -> Proc | None:
    """The process ``pid`` now, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold anything: split after the last ")".
    fields = text.rsplit(")", 1)[1].split()
    return Proc(pid, fields[0], int(fields[1]), int(fields[19]))


def all_procs() -> list[Proc]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            seen = proc(int(entry.name))
            if seen is not None:
                found.append(seen)
    return found


def descendants(root: int | None = None) -> list[Proc]:
    """Every process below ``root`` (this one by default): children, theirs, and so on."""
    root = os.getpid() if root is None else root
    by_parent: dict[int, list[Proc]] = {}
    for seen in all_procs():
        by_parent.setdefault(seen.ppid, []).append(seen)
    found: list[Proc] = []
    stack = [root]
    while stack:
        for child in by_parent.get(stack.pop(), []):
            found.append(child)
            stack.append(child.pid)
    return found


def still_running(keys: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which of these (pid, start time) pairs still name a process, zombies included."""
    left = set()
    for pid, start in keys:
        seen = proc(pid)
        if seen is not None and seen.start == start:
            left.add((pid, start))
    return left


def live(seen: Proc) -> bool:
    """Whether the process ``seen`` names still runs (a zombie has exited: whoever
    adopted it reaps it)."""
    now = proc(seen.pid)
    return now is not None and now.start == seen.start and now.state != "Z"


async def sigkill_and_time_the_orphans(daemon: trio.Process, below: list[Proc]) -> float:
    """SIGKILL ``daemon``; the seconds until none of ``below`` (its descendants) runs.

    Raises:
        AssertionError: some still ran 10 s later.
    """
    daemon.kill()
    with trio.fail_after(5):
        await daemon.wait()
    killed_at = trio.current_time()
    with trio.move_on_after(10):
        while [p for p in below if live(p)]:  # noqa: ASYNC110 - real processes, bounded
            await trio.sleep(0.005)
    left = [p for p in below if live(p)]
    assert not left, f"still running 10 s after the daemon was killed: {left}"
    return trio.current_time() - killed_at


def kill_leftovers(below: list[Proc]) -> None:
    """SIGKILL whatever of ``below`` still runs (a failed test's cleanup)."""
    for leftover in below:
        if live(leftover):
            os.kill(leftover.pid, signal.SIGKILL)
