"""Bounded mailboxes with an overflow policy and a control lane."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from ._envelope import Envelope

_v = attrs.validators


class Overflow(enum.Enum):
    """What a full mailbox does with one more message."""

    REJECT = "reject"
    """Refuse it: the sender gets MailboxFull."""
    BLOCK = "block"
    """An async sender (``send``, ``ask``) waits for room until its deadline; ``tell``
    is refused like REJECT."""
    DROP_NEWEST = "drop_newest"
    """Drop the new message to the dead-letter log; the sender is not told."""
    DROP_OLDEST = "drop_oldest"
    """Evict the oldest queued message to the dead-letter log (its asker gets
    MailboxFull) and queue the new one."""


@attrs.frozen
class MailboxConfig:
    """Size and overflow policy of an actor's mailbox.

    ``stash`` is how many messages the mailbox accepts while the actor restarts (they are
    handled by its next run); with 0, senders get ActorRestarting at once.
    """

    capacity: int = attrs.field(default=1000, validator=_v.and_(_v.instance_of(int), _v.ge(1)))
    overflow: Overflow = attrs.field(default=Overflow.REJECT, validator=_v.instance_of(Overflow))
    stash: int = attrs.field(
        default=0, kw_only=True, validator=_v.and_(_v.instance_of(int), _v.ge(0))
    )


@attrs.frozen
class MailboxStatistics:
    """A snapshot of a mailbox."""

    depth: int
    control_depth: int
    capacity: int
    high_water: int
    delivered: int
    dropped: dict[str, int]


class Offer(enum.Enum):
    ACCEPTED = "accepted"
    FULL = "full"
    DROPPED_NEWEST = "dropped_newest"


ACCEPTED: tuple[Offer, None] = (Offer.ACCEPTED, None)
"""What ``Mailbox.offer`` returns for a plain accept (always this very tuple)."""


@attrs.define(eq=False)
class Mailbox:
    """Messages waiting for one actor; it outlives the actor's restarts.

    One task reads it (the actor's loop), so the reader is parked and woken directly.
    The control lane (stops, probes) is served before the backlog and is not bounded:
    it only ever holds the runtime's own few messages.
    """

    config: MailboxConfig
    # The lanes and the drop counts are made when first used: an idle actor's mailbox
    # holds no empty deque (600 bytes) nor list.
    _queue: deque[Envelope] | None = attrs.field(default=None, init=False)
    _control: list[Envelope] | None = attrs.field(default=None, init=False)
    _reader: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    _writers: trio.lowlevel.ParkingLot | None = attrs.field(default=None, init=False)
    _high_water: int = attrs.field(default=0, init=False)
    _delivered: int = attrs.field(default=0, init=False)
    _dropped: dict[str, int] | None = attrs.field(default=None, init=False)

    _capacity: int = attrs.field(
        init=False, default=attrs.Factory(lambda self: self.config.capacity, takes_self=True)
    )
    held: int = attrs.field(default=0, init=False)
    """Messages taken out by a concurrent actor's loop that wait for a free handler of
    their group: they still count against the capacity."""

    def __len__(self) -> int:
        queue = self._queue
        return (len(queue) if queue is not None else 0) + self.held

    @property
    def full(self) -> bool:
        return len(self) >= self._capacity

    def offer(self, envelope: Envelope) -> tuple[Offer, Envelope | None]:
        """Queue ``envelope`` if the policy allows; return what happened and, for
        DROP_OLDEST, the evicted envelope."""
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        depth = len(queue) + self.held
        if depth < self._capacity:  # the common case, first and short
            queue.append(envelope)
            if depth >= self._high_water:
                self._high_water = depth + 1
            if self._reader is not None:
                self._wake_reader()
            return ACCEPTED
        return self._overflow(envelope)

    def _overflow(self, envelope: Envelope) -> tuple[Offer, Envelope | None]:
        queue = self._queue
        assert queue is not None  # made by offer()
        evicted = None
        if len(queue) + self.held >= self.config.capacity:
            overflow = self.config.overflow
            if overflow is Overflow.DROP_OLDEST and not queue:
                # The oldest wait in a concurrent actor's lanes, out of reach: the new
                # one is the one dropped.
                self.count_drop("mailbox_full")
                return Offer.DROPPED_NEWEST, None
            if overflow is Overflow.DROP_OLDEST:
                evicted = queue.popleft()
            elif overflow is Overflow.DROP_NEWEST:
                self.count_drop("mailbox_full")
                return Offer.DROPPED_NEWEST, None
            else:
                return Offer.FULL, None
            self.count_drop("mailbox_full")
        queue.append(envelope)
        if len(queue) + self.held > self._high_water:
            self._high_water = len(queue) + self.held
        if self._reader is not None:
            self._wake_reader()
        return Offer.ACCEPTED, evicted

    def put_control(self, envelope: Envelope) -> None:
        if self._control is None:
            self._control = []
        self._control.append(envelope)
        if self._reader is not None:
            self._wake_reader()

    def _wake_reader(self) -> None:
        task, self._reader = self._reader, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def pop(self) -> Envelope | None:
        """The next envelope, control lane first; None when both lanes are empty."""
        control = self._control
        if control:
            return control.pop(0)
        queue = self._queue
        if queue:
            self._delivered += 1
            if self._writers is not None and self._writers:
                self._writers.unpark()
            return queue.popleft()
        return None

    def pop_control(self) -> Envelope | None:
        """The next control envelope (probes, stops), or None: for a loop whose handler
        slots are all taken, which still answers the runtime at once."""
        control = self._control
        if control:
            return control.pop(0)
        return None

    def hold(self) -> None:
        """A message popped by a concurrent actor waits in one of its lanes."""
        self.held += 1

    def release_held(self) -> None:
        """A held message reached its handler: its room in the mailbox is free."""
        self.held -= 1
        if self._writers is not None and self._writers:
            self._writers.unpark()

    def requeue(self, envelopes: Iterable[Envelope]) -> None:
        """Put held messages back at the front of the queue, in the given order (the
        end of a concurrent actor's run)."""
        envelopes = list(envelopes)
        self.held = max(0, self.held - len(envelopes))
        if self._queue is None:
            self._queue = deque()
        self._queue.extendleft(reversed(envelopes))
        if envelopes and self._reader is not None:
            self._wake_reader()

    def wake(self) -> None:
        """Wake the reader if it waits (a handler slot freed up)."""
        if self._reader is not None:
            self._wake_reader()

    async def wait(self, *, control_only: bool = False) -> None:
        """Wait until a lane has an envelope (returns at once, after a checkpoint, if one
        does), or, with ``control_only``, until the control lane has one or ``wake()``
        is called. Only the actor's loop calls it."""
        if self._control or (self._queue and not control_only):
            await trio.lowlevel.checkpoint()
            return
        self._reader = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def park_reader(self) -> Callable[[Any], trio.lowlevel.Abort]:
        """Make the current task the reader woken by the next envelope, and return the
        abort function to give ``trio.lowlevel.wait_task_rescheduled``: ``wait()``
        without a coroutine of its own, for an actor loop that found both lanes empty."""
        self._reader = trio.lowlevel.current_task()
        return self._abort_wait

    def _abort_wait(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self._reader = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait_for_room(self) -> None:
        """Wait until the backlog is below capacity (for the BLOCK policy)."""
        while len(self) >= self._capacity:
            if self._writers is None:
                self._writers = trio.lowlevel.ParkingLot()
            await self._writers.park()

    def drain(self) -> list[Envelope]:
        """Empty both lanes and return what they held."""
        drained = [*(self._control or ()), *(self._queue or ())]
        self._control = self._queue = None
        if self._writers is not None:
            self._writers.unpark_all()
        return drained

    def count_drop(self, reason: str) -> None:
        if self._dropped is None:
            self._dropped = {}
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=len(self),
            control_depth=len(self._control or ()),
            capacity=self.config.capacity,
            high_water=self._high_water,
            delivered=self._delivered,
            dropped=dict(self._dropped or {}),
        )
