"""The dead-letter log: every message refused or dropped with nobody left to tell."""

from __future__ import annotations

import collections
import time
from collections import deque
from typing import Any

import attrs
import trio

from ._envelope import Envelope

REASONS = (
    "no_such_actor",
    "not_ready",
    "rate_limited",
    "mailbox_full",
    "stopped",
    "restarting",
    "expired",
    "fault",  # dropped by an injected fault (cws_actors.faults)
)


@attrs.frozen
class DeadLetter:
    """A message that was not handled, and why (``reason`` is one of REASONS)."""

    envelope: Envelope
    reason: str
    at: float
    """When, on Trio's clock (comparable with deadlines)."""
    detail: str = ""
    wall_time: float = attrs.field(factory=time.time)
    """When, as Unix time (for people and dashboards)."""

    def as_dict(self) -> dict[str, Any]:
        envelope = self.envelope
        return {
            "envelope_id": envelope.id,
            "source": envelope.source.value,
            "target": envelope.target,
            "reason": self.reason,
            "detail": self.detail,
            "at": self.at,
            "time": self.wall_time,
            "correlation_id": envelope.correlation_id,
            "payload": repr(envelope.payload)[:200],
        }


@attrs.define(eq=False)
class DeadLetterLog:
    """Keeps the latest ``capacity`` dead letters and a count of all of them by reason."""

    capacity: int = 10_000
    _entries: deque[DeadLetter] = attrs.field(init=False)
    _counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def __attrs_post_init__(self) -> None:
        self._entries = deque(maxlen=self.capacity)

    def record(self, envelope: Envelope, reason: str, detail: str = "") -> DeadLetter:
        letter = DeadLetter(envelope, reason, trio.current_time(), detail)
        self._entries.append(letter)
        self._counts[reason] += 1
        return letter

    def entries(self) -> tuple[DeadLetter, ...]:
        return tuple(self._entries)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)
