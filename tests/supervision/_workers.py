"""Test children that record what happens to them and crash or return on command."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from supervision import ChildSpec


@attrs.define
class Workers:
    """Makes children whose starts and exits land in ``log`` ("start a", "exit a")."""

    log: list[str] = attrs.field(factory=list)
    _triggers: dict[str, trio.Event] = attrs.field(factory=dict)
    _actions: dict[str, str] = attrs.field(factory=dict)

    def spec(self, child_id: str, **options: Any) -> ChildSpec:
        return ChildSpec(child_id, self.start_function(child_id), **options)

    def start_function(self, child_id: str) -> Any:
        async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            trigger = self._triggers[child_id] = trio.Event()
            self.log.append(f"start {child_id}")
            try:
                task_status.started(child_id)
                await trigger.wait()
                if self._actions.pop(child_id) == "crash":
                    raise RuntimeError(f"{child_id} crashed")
            finally:
                self.log.append(f"exit {child_id}")

        return run

    def crash(self, child_id: str) -> None:
        self._actions[child_id] = "crash"
        self._triggers[child_id].set()

    def finish(self, child_id: str) -> None:
        self._actions[child_id] = "return"
        self._triggers[child_id].set()

    def take(self) -> list[str]:
        """The log so far, emptied."""
        entries, self.log[:] = list(self.log), []
        return entries


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task alive in this run, system tasks included."""
    found: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found
