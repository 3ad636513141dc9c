"""Snapshots a supervisor hands out: states, exit reasons and statistics (all frozen)."""

from __future__ import annotations

import enum
from typing import Any, Protocol

import attrs

from ._probes import ProbeStatus
from ._spec import Restart, Strategy


class SupervisorState(enum.Enum):
    """Lifecycle of a supervisor; only a RUNNING one accepts operations."""

    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"
    CLOSED = "closed"


class ChildState(enum.Enum):
    """Where a child is in its lifecycle."""

    STARTING = "starting"
    """Its start function runs; it has not called ``task_status.started()`` yet."""
    RUNNING = "running"
    RESTARTING = "restarting"
    """It exited and waits for its backoff delay, or for its turn in a group restart."""
    STOPPING = "stopping"
    STOPPED = "stopped"
    """Not running and not scheduled to run (terminated, or exited and not restarted)."""
    QUARANTINED = "quarantined"
    """It exhausted its own restart budget; ``clear_quarantine()`` starts it again."""


class ChildView(Protocol):
    """A live, read-only view of one child's state and ready flag
    (``Supervisor.child_view``): reading it costs two attribute reads, no call."""

    @property
    def state(self) -> ChildState: ...

    @property
    def ready(self) -> bool: ...


class ExitKind(enum.Enum):
    """Why a child's run ended."""

    NORMAL = "normal"
    """Its start function returned."""
    EXCEPTION = "exception"
    """It raised (type and message recorded)."""
    CANCELLED = "cancelled"
    """The supervisor stopped it (terminate, group restart, shutdown)."""
    LIVENESS = "liveness"
    """Its startup or liveness probe failed ``failure_threshold`` times in a row."""
    SHUTDOWN_TIMEOUT = "shutdown_timeout"
    """It kept running past its ``shutdown`` deadline and was abandoned."""
    ESCALATED = "escalated"
    """A restart intensity was exceeded: it is a nested supervisor that gave up, or its
    own supervisor gave up and stopped it."""


_NORMAL_KINDS = frozenset({ExitKind.NORMAL, ExitKind.CANCELLED})


@attrs.frozen
class ExitReason:
    """How and when a child's run ended."""

    kind: ExitKind
    at: float
    """``trio.current_time()`` of the exit."""
    exception_type: str | None = None
    message: str = ""

    @property
    def abnormal(self) -> bool:
        """True when a transient child is restarted after this exit."""
        return self.kind not in _NORMAL_KINDS

    def __str__(self) -> str:
        detail = ": ".join(part for part in (self.exception_type, self.message) if part)
        return f"{self.kind.value}: {detail}" if detail else self.kind.value


@attrs.frozen
class ChildStatistics:
    """A snapshot of one child."""

    id: str
    state: ChildState
    restart: Restart
    restarts: int
    """Restarts by the supervisor (not by restart_child or clear_quarantine)."""
    last_exit: ExitReason | None
    backoff: float
    """The delay drawn for its latest restart (0.0 when none)."""
    ready: bool
    probes: tuple[ProbeStatus, ...]
    started_at: float | None
    """``trio.current_time()`` when its current run called started(); None if not running."""
    runs: int
    """How many times its start function has been called."""
    last_restart_at: float | None = None
    """``trio.current_time()`` when the supervisor last decided to restart it (the start
    follows after the backoff delay); None if it never did."""


@attrs.frozen
class ChildInfo:
    """One row of ``which_children()``: the value is what the child passed to started()."""

    id: str
    state: ChildState
    restart: Restart
    value: Any


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a supervisor and its children (in start order)."""

    name: str
    strategy: Strategy
    state: SupervisorState
    max_restarts: int
    period: float
    restarts: int
    """Restarts counted toward the intensity, over the supervisor's life."""
    recent_restarts: int
    """Restarts within the last ``period`` seconds."""
    abandoned: int
    """Children abandoned past their shutdown deadline and still running."""
    children: tuple[ChildStatistics, ...]

    def child(self, child_id: str) -> ChildStatistics:
        """The statistics of one child.

        Raises:
            KeyError: no child with that id.
        """
        for child in self.children:
            if child.id == child_id:
                return child
        raise KeyError(child_id)
