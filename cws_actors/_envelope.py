"""Envelopes: every message, whatever its origin, travels in one."""

from __future__ import annotations

import contextvars
import enum
import itertools
import math
from typing import Any

import attrs
import trio


class Source(enum.Enum):
    """Where a message came from; rate limits are kept per source."""

    HTTP = "http"
    CLI = "cli"
    BUS = "bus"
    ACTOR = "actor"
    INTERNAL = "internal"


class Reply:
    """The one-shot slot an asker waits on. A reply is set once; later ones are ignored."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set_value(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def set_error(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


_ids = itertools.count(1)


def next_id() -> int:
    return next(_ids)


@attrs.frozen
class Envelope:
    """A message on its way to an actor.

    ``deadline`` is on Trio's clock (``math.inf`` for none); ``reply`` is set for an ask.
    """

    id: int
    source: Source
    target: str
    payload: Any
    reply: Reply | None = None
    deadline: float = math.inf
    correlation_id: str | None = None
    sender: str | None = None
    control: bool = False

    def time_left(self) -> float:
        """Seconds until the deadline (``math.inf`` when there is none; 0 when passed)."""
        return max(0.0, self.deadline - trio.current_time())

    @property
    def expired(self) -> bool:
        return self.deadline <= trio.current_time()


_current: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "cws_actors_envelope", default=None
)


def current_envelope() -> Envelope:
    """The envelope whose handler is running in this task.

    Raises:
        RuntimeError: not called from inside an actor's handler.
    """
    envelope = _current.get()
    if envelope is None:
        raise RuntimeError("current_envelope() is only available inside an actor's handler")
    return envelope
