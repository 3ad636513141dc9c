"""What the injector shows of its faults: their state, records and firings."""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ._spec import FaultKind, FaultSpec


class FaultState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"
    """Its ``duration`` ran out."""
    SPENT = "spent"
    """It fired ``count`` times."""
    CLEARED = "cleared"


@attrs.frozen
class FaultRecord:
    """An injected fault as it was when asked for (``FaultInjector.list``, ``get``)."""

    id: str
    target: str
    spec: FaultSpec
    state: FaultState
    created_at: float
    """On Trio's clock, like ``expires_at`` and ``last_fired_at``."""
    created_time: float
    """Unix time, for people and dashboards."""
    expires_at: float | None
    fired: int
    """How many times it fired."""
    seen: int
    """How many messages, starts or process ticks it was checked against."""
    last_fired_at: float | None

    @property
    def kind(self) -> FaultKind:
        return self.spec.kind

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "kind": self.spec.kind.value,
            "spec": self.spec.as_dict(),
            "text": str(self.spec),
            "state": self.state.value,
            "created_at": self.created_at,
            "created_time": self.created_time,
            "expires_at": self.expires_at,
            "fired": self.fired,
            "seen": self.seen,
            "last_fired_at": self.last_fired_at,
        }


@attrs.frozen
class FaultFiring:
    """One firing of a fault, in ``FaultInjector.firings()``."""

    fault_id: str
    kind: FaultKind
    path: str
    """The actor it hit."""
    number: int
    """1 for the fault's first firing, 2 for the next..."""
    seen: int
    """The fault's ``seen`` count when it fired: which message (or start, or tick) it was."""
    at: float
    """On Trio's clock."""
    detail: str = ""
    """What it did, when that varies: the latency drawn, the signal sent."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault_id": self.fault_id,
            "kind": self.kind.value,
            "path": self.path,
            "number": self.number,
            "seen": self.seen,
            "at": self.at,
            "detail": self.detail,
        }
