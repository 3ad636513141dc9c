"""Envelopes: every message, whatever its origin, travels in one."""

from __future__ import annotations

import contextvars
import enum
import itertools
import math
from typing import Any

import trio


class Source(enum.Enum):
    """Where a message came from; rate limits are kept per source."""

    HTTP = "http"
    CLI = "cli"
    BUS = "bus"
    ACTOR = "actor"
    INTERNAL = "internal"


class Reply:
    """The one-shot slot an asker waits on. The first value or error set wins; later
    ones are ignored. One task waits on it (the asker), so it parks that task directly
    rather than through a trio.Event."""

    __slots__ = ("_error", "_task", "_value", "done", "handler_scope")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self.done = False
        self.handler_scope: trio.CancelScope | None = None
        """Set by an actor that handles the ask in a task of its own (``max_concurrency``
        above 1): an asker that gives up (cancelled) cancels the handler too."""

    def set_value(self, value: Any) -> bool:
        """Set the reply; False if one was set already (the ask timed out, say)."""
        if self.done:
            return False
        self._value = value
        self._finish()
        return True

    def set_error(self, error: BaseException) -> bool:
        """Set the error; False if a reply was set already."""
        if self.done:
            return False
        self._error = error
        self._finish()
        return True

    def _finish(self) -> None:
        self.done = True
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self._task = None
        scope = self.handler_scope
        if scope is not None and not self.done:
            scope.cancel()  # nobody waits for the answer any more
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> Any:
        """Wait for the reply; return the value or raise the error."""
        if self.done:
            await trio.lowlevel.checkpoint()
        else:
            self._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._error is not None:
            raise self._error
        return self._value


next_id = itertools.count(1).__next__
"""The next envelope id (ids are unique within the process)."""


class Envelope:
    """A message on its way to an actor.

    ``deadline`` is on Trio's clock (``math.inf`` for none); ``reply`` is set for an ask.
    Built once per message and never changed (treat it as read-only): a plain class with
    ``__slots__`` and no validation, because it is on every message's path.
    """

    __slots__ = (
        "control", "correlation_id", "deadline", "id", "payload", "reply", "sender", "source",
        "target",
    )  # fmt: skip

    def __init__(
        self,
        id: int,
        source: Source,
        target: str,
        payload: Any,
        reply: Reply | None = None,
        deadline: float = math.inf,
        correlation_id: str | None = None,
        sender: str | None = None,
        control: bool = False,
    ) -> None:
        self.id = id
        self.source = source
        self.target = target
        self.payload = payload
        self.reply = reply
        self.deadline = deadline
        self.correlation_id = correlation_id
        self.sender = sender
        self.control = control

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Envelope({fields})"

    def time_left(self) -> float:
        """Seconds until the deadline (``math.inf`` when there is none; 0 when passed)."""
        return max(0.0, self.deadline - trio.current_time())

    @property
    def expired(self) -> bool:
        return self.deadline <= trio.current_time()


_FIELDS = (
    "id", "source", "target", "payload", "reply", "deadline", "correlation_id", "sender",
    "control",
)  # fmt: skip


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
