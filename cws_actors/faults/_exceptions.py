"""The exceptions of :mod:`cws_actors.faults`.

One base, a small tree::

    FaultError
    ├── FaultSpecError       a fault spec that cannot be (also a ValueError)
    │   └── FaultTargetError a target the fault cannot apply to
    ├── ChaosPlanError       a chaos plan that cannot run (also a ValueError)
    ├── FaultNotFound        no fault with that id (also a LookupError)
    └── InjectedFault        raised in a handler by a crash or error_rate fault

The second bases keep what ``except ValueError`` and ``except LookupError`` caught
before the tree was drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._spec import FaultKind


class FaultError(Exception):
    """Base class of the errors raised by :mod:`cws_actors.faults`."""


class FaultSpecError(FaultError, ValueError):
    """Raised for a fault spec that cannot be: an unknown kind, a parameter that does not
    apply to the kind or is out of range (a probability outside 0..1, a negative
    duration), or text that does not follow the compact grammar."""


class FaultTargetError(FaultSpecError):
    """Raised when a fault cannot apply to its target: a target that is not an actor
    path or glob, a process fault (``kill``, ``pause``, ``memory_hog``) aimed at an
    actor that runs in the daemon's process, or ``memory_hog`` at a plugin without a
    memory limit."""


class ChaosPlanError(FaultError, ValueError):
    """Raised for a chaos plan that cannot run: what was wrong and what is expected."""


class InjectedFault(FaultError):
    """Raised in an actor's handler by a ``crash`` fault (the actor crashes) or an
    ``error_rate`` fault (only the asker sees it, chained in HandlerFailed)."""

    def __init__(self, fault_id: str, kind: FaultKind, path: str) -> None:
        super().__init__(f"fault {fault_id!r} ({kind.value}) injected into {path}")
        self.fault_id = fault_id
        self.kind = kind
        self.path = path


class FaultNotFound(FaultError, LookupError):
    """Raised by ``get`` and ``clear`` for an id that names no active fault."""
