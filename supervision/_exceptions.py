"""The exceptions of :mod:`supervision`.

One base, a small tree::

    SupervisionError
    ├── RestartIntensityExceeded   the supervisor gave up: too many restarts in its period
    ├── ChildNotFound              no child with that id
    ├── DuplicateChild             a child with that id already exists
    ├── ChildRunning               delete_child() of a child that runs: terminate it first
    ├── ChildStartFailed           a child raised, or returned, before calling started()
    ├── ChildQuarantined           waiting on a child that is quarantined
    └── SupervisorClosed           the supervisor is stopping, failed or closed

Bad arguments raise the built-in ``TypeError`` or ``ValueError`` with a message that
names the field and what is expected.
"""

from __future__ import annotations


class SupervisionError(Exception):
    """Base class of every error raised by :mod:`supervision`."""


class RestartIntensityExceeded(SupervisionError):
    """Raised out of ``open_supervisor`` when more than ``max_restarts`` restarts happen
    within ``period`` seconds.

    The supervisor has stopped all its children in reverse order before raising it. For a
    parent supervisor this is an ordinary child failure, recorded as ``escalated``.
    """

    def __init__(self, supervisor: str, restarts: int, period: float, child_id: str) -> None:
        super().__init__(
            f"supervisor {supervisor!r} exceeded its restart intensity: {restarts} restarts"
            f" within {period:g}s (last failing child: {child_id!r})"
        )
        self.supervisor = supervisor
        self.restarts = restarts
        self.period = period
        self.child_id = child_id


class ChildNotFound(SupervisionError, LookupError):
    """Raised by an operation naming a child id that the supervisor does not have."""

    def __init__(self, child_id: str, supervisor: str) -> None:
        super().__init__(f"supervisor {supervisor!r} has no child {child_id!r}")
        self.child_id = child_id


class DuplicateChild(SupervisionError, ValueError):
    """Raised by ``start_child`` when a child with the same id is already supervised."""

    def __init__(self, child_id: str, supervisor: str) -> None:
        super().__init__(
            f"supervisor {supervisor!r} already has a child {child_id!r};"
            " child ids must be unique (remove_child() it first to replace it)"
        )
        self.child_id = child_id


class ChildRunning(SupervisionError):
    """Raised by ``delete_child`` when the child is not stopped (it is starting, running,
    waiting to restart or stopping), as OTP's ``delete_child`` answers
    ``{error, running}``: stop it with ``terminate_child()`` first, or use
    ``remove_child()``, which does both.

    Attributes:
        child_id: the child's id.
        state: its state, a ``ChildState`` value such as ``"running"``.
    """

    def __init__(self, child_id: str, supervisor: str, state: str) -> None:
        super().__init__(
            f"supervisor {supervisor!r} cannot delete child {child_id!r}: it is {state};"
            " stop it with terminate_child() first, or remove_child() to do both"
        )
        self.child_id = child_id
        self.state = state


class ChildStartFailed(SupervisionError):
    """Raised by ``start_child``, ``restart_child`` and ``clear_quarantine`` when the
    child's start function raises (the cause is chained) or returns before calling
    ``task_status.started()``. The child is not added, or stays stopped."""

    def __init__(self, child_id: str, detail: str) -> None:
        super().__init__(f"child {child_id!r} failed to start: {detail}")
        self.child_id = child_id


class ChildQuarantined(SupervisionError):
    """Raised by ``wait_ready`` when the child is quarantined: it will not become ready
    until ``clear_quarantine()`` is called."""

    def __init__(self, child_id: str) -> None:
        super().__init__(
            f"child {child_id!r} is quarantined after exhausting its restart budget;"
            " call clear_quarantine() to start it again"
        )
        self.child_id = child_id


class SupervisorClosed(SupervisionError):
    """Raised by an operation on a supervisor that is stopping, has failed or is closed.

    Open a new supervisor with ``open_supervisor()`` instead of reusing this one.
    """
