"""The router: the one entry point for every message, from the API, the CLI, the bus
and actors. It refuses with a typed error, or queues the envelope in the mailbox."""

from __future__ import annotations

import collections
import heapq
import math
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import trio

from supervision import ChildState

from ._bus import Event
from ._cell import ActorCell
from ._deadletters import DeadLetter, DeadLetterLog
from ._envelope import Envelope, Reply, Source, next_id
from ._exceptions import (
    ActorError,
    ActorNotFound,
    ActorQuarantined,
    ActorRestarting,
    ActorStopped,
    AskTimeout,
    DeadlineExceeded,
    MailboxFull,
    NotReady,
    RateLimited,
)
from ._mailbox import ACCEPTED as _ACCEPTED
from ._mailbox import Offer, Overflow

_RESTARTING = frozenset({ChildState.STARTING, ChildState.RESTARTING, ChildState.STOPPING})

# Retry-After for a NotReady refusal: readiness is re-checked on the probe's period,
# which the router does not know; one second is the usual HTTP hint.
_NOT_READY_RETRY = 1.0
_INF = math.inf  # a module global: read on every message, one lookup less


@attrs.frozen
class LateReply:
    """An ask handled after its asker had stopped waiting (the payload is not kept)."""

    envelope_id: int
    target: str
    correlation_id: str | None
    at: float
    """When its handler finished, on Trio's clock."""


@attrs.define(eq=False)
class Router:
    """Checks, in order: the target exists; its deadline has not passed; it is running
    (or restarting with stash room) and ready; its token bucket for the source has a
    token and its concurrency cap room; its mailbox has room."""

    cells: dict[str, ActorCell] = attrs.field(factory=dict)
    dead_letters: DeadLetterLog = attrs.field(factory=DeadLetterLog)
    on_dead_letter: Callable[[DeadLetter], None] | None = None
    timers: AskTimers = attrs.field(factory=lambda: AskTimers())
    tombstones: dict[str, None] = attrs.field(factory=dict)
    """Paths of stopped actors (the latest 10,000), so that a stale ref gets
    ActorStopped rather than ActorNotFound."""
    rejected: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )
    late_replies: collections.deque[LateReply] = attrs.field(
        factory=lambda: collections.deque(maxlen=10_000), init=False
    )
    """Asks handled after their asker stopped waiting (it timed out): delivered and
    handled, with nobody left for the answer. The latest 10,000."""
    late: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    """Late answers per actor path, for the metrics."""

    # tell, send and ask route inline (no helper calls on the way of a message to an
    # open cell): they are every message's path.

    def tell(
        self,
        path: str,
        payload: Any,
        source: Source = Source.ACTOR,
        correlation_id: str | None = None,
        timeout: float = math.inf,
    ) -> None:
        deadline = _INF if timeout == _INF else _deadline(timeout)
        envelope = Envelope(next_id(), source, path, payload, None, deadline, correlation_id)
        if timeout == 0:
            self._refuse(envelope, DeadlineExceeded(path))
        cell = self.cells.get(path)
        if cell is None:
            self._missing(envelope)
        if not cell.open:
            self._admit(cell, envelope)
        outcome = cell.mailbox.offer(envelope)
        if outcome is _ACCEPTED:
            cell.in_flight += 1
            cell.routed += 1
        else:
            self._not_accepted(cell, envelope, outcome)

    async def send(
        self,
        path: str,
        payload: Any,
        source: Source = Source.ACTOR,
        correlation_id: str | None = None,
        timeout: float = math.inf,
    ) -> None:
        deadline = _INF if timeout == _INF else _deadline(timeout)
        envelope = Envelope(next_id(), source, path, payload, None, deadline, correlation_id)
        if timeout == 0:
            self._refuse(envelope, DeadlineExceeded(path))
        cell = self.cells.get(path)
        if cell is None:
            self._missing(envelope)
        if not cell.open:
            self._admit(cell, envelope)
        outcome = cell.mailbox.offer(envelope)
        if outcome is _ACCEPTED:
            cell.in_flight += 1
            cell.routed += 1
        elif outcome[0] is Offer.FULL and cell.mailbox.config.overflow is Overflow.BLOCK:
            await self._queue_when_room(cell, envelope)
            return
        else:
            self._not_accepted(cell, envelope, outcome)
        await trio.lowlevel.checkpoint()

    async def ask(
        self,
        path: str,
        payload: Any,
        timeout: float = 5.0,
        source: Source = Source.ACTOR,
        correlation_id: str | None = None,
    ) -> Any:
        reply = Reply()
        deadline = _INF if timeout == _INF else _deadline(timeout)
        envelope = Envelope(next_id(), source, path, payload, reply, deadline, correlation_id)
        if timeout == 0:
            self._refuse(envelope, DeadlineExceeded(path))
        cell = self.cells.get(path)
        if cell is None:
            self._missing(envelope)
        if not cell.open:
            self._admit(cell, envelope)
        outcome = cell.mailbox.offer(envelope)
        if outcome is _ACCEPTED:
            cell.in_flight += 1
            cell.routed += 1
        elif outcome[0] is Offer.FULL and cell.mailbox.config.overflow is Overflow.BLOCK:
            await self._queue_when_room(cell, envelope)
        else:
            self._not_accepted(cell, envelope, outcome)
        if deadline != _INF:
            self.timers.add(deadline, reply, path, timeout)
        return await reply.wait()

    def deliver_event(self, path: str, event: Event) -> None:
        """Route a bus event; a refusal becomes a dead letter (nobody waits for it).

        A refused durable event stays unacknowledged in the store: refused by a full
        mailbox, the running actor pages it in once there is room (see
        :meth:`ActorCell.redeliver_later`); refused for another reason (not ready, rate
        limited, restarting), the actor's next start redelivers it."""
        envelope = Envelope(next_id(), Source.BUS, path, event)
        if event.durable:
            cell = self.cells.get(path)
            if cell is not None:
                if cell.durable_queued(event.id):
                    return  # the store's redelivery was quicker: it is queued already
                # Marked before routing: a dead letter for it (below) takes the mark off.
                cell.mark_durable_queued(event.id)
        try:
            self._route(envelope)
        except ActorError as error:
            self.dead_letter(envelope, error.reason, str(error))

    def expired(self, envelope: Envelope) -> None:
        """An envelope whose deadline passed in the mailbox. An ask's asker is told by
        its timer (AskTimeout), at that same moment: whichever of the two ran first, the
        asker would otherwise get one error or the other by the scheduler's whim."""
        self.dead_letter(envelope, "expired", "deadline passed in the mailbox")

    def answered_late(self, envelope: Envelope) -> None:
        """An ask whose handler finished after the asker had its error (a timeout)."""
        self.late_replies.append(
            LateReply(envelope.id, envelope.target, envelope.correlation_id, trio.current_time())
        )
        self.late[envelope.target] += 1

    def bury(self, path: str) -> None:
        """Forget the actor at ``path``; later messages to it get ActorStopped."""
        self.cells.pop(path, None)
        self.tombstones[path] = None
        if len(self.tombstones) > 10_000:
            del self.tombstones[next(iter(self.tombstones))]

    def dead_letter(self, envelope: Envelope, reason: str, detail: str = "") -> None:
        event = envelope.payload
        if isinstance(event, Event) and event.durable:
            cell = self.cells.get(envelope.target)
            if cell is not None:
                if reason == "mailbox_full":  # refused, dropped or evicted
                    cell.redeliver_later(event.id)
                else:
                    cell.unmark_durable_queued(event.id)
        letter = self.dead_letters.record(envelope, reason, detail)
        if self.on_dead_letter is not None:
            self.on_dead_letter(letter)

    # ----------------------------------------------------------------- internals

    async def _queue_when_room(self, cell: ActorCell, envelope: Envelope) -> None:
        """Wait for room in a full BLOCK mailbox until the envelope's deadline."""
        mailbox = cell.mailbox
        with trio.move_on_at(envelope.deadline):
            await mailbox.wait_for_room()
            self._queue(cell, envelope)
            return
        self._refuse(envelope, MailboxFull(envelope.target, mailbox.config.capacity))

    def _route(self, envelope: Envelope) -> ActorCell:
        cell = self.cells.get(envelope.target)
        if cell is None:
            self._missing(envelope)
        if not cell.open:
            self._admit(cell, envelope)
        self._queue(cell, envelope)
        return cell

    def _missing(self, envelope: Envelope) -> NoReturn:
        if envelope.target in self.tombstones:
            self._refuse(envelope, ActorStopped(envelope.target))
        self._refuse(envelope, ActorNotFound(envelope.target))

    def _admit(self, cell: ActorCell, envelope: Envelope) -> None:
        """The checks of a cell that is not ``open`` (see :attr:`ActorCell.open`): an
        open one, running and ready with no rate limit, is admitted without them."""
        # Every entry point builds its envelope fresh and refuses a zero timeout, so
        # the deadline is in the future here; expiry in the mailbox is the cell's check.
        path = envelope.target
        if cell.stopped:
            self._refuse(envelope, ActorStopped(path))
        state, ready = cell.supervision_status()
        if state is ChildState.RUNNING:
            if not ready:
                self._refuse(envelope, NotReady(path, _NOT_READY_RETRY))
        elif state in _RESTARTING:
            if len(cell.mailbox) >= cell.mailbox.config.stash:
                self._refuse(envelope, ActorRestarting(path))
        elif state is ChildState.QUARANTINED:
            self._refuse(envelope, ActorQuarantined(path))
        else:
            self._refuse(envelope, ActorStopped(path))
        limit = cell.rate_limit
        if limit is not None:
            wait = cell.take_token(envelope.source)
            if wait:
                self._refuse(envelope, RateLimited(path, wait, limit))
            if limit.max_concurrent is not None and cell.in_flight >= limit.max_concurrent:
                self._refuse(
                    envelope,
                    RateLimited(
                        path, 1.0 / limit.rate, limit, f" ({limit.max_concurrent} in flight)"
                    ),
                )

    def _queue(self, cell: ActorCell, envelope: Envelope) -> None:
        outcome = cell.mailbox.offer(envelope)
        if outcome is _ACCEPTED:
            cell.in_flight += 1
            cell.routed += 1
        else:
            self._not_accepted(cell, envelope, outcome)

    def _not_accepted(
        self, cell: ActorCell, envelope: Envelope, offered: tuple[Offer, Envelope | None]
    ) -> None:
        """What follows an offer other than a plain accept: a refusal (MailboxFull), a
        drop of the newest (a dead letter), or an accept that evicted the oldest."""
        outcome, evicted = offered
        if outcome is not Offer.ACCEPTED:
            if outcome is Offer.FULL:
                self._refuse(envelope, MailboxFull(envelope.target, cell.mailbox.config.capacity))
            self.rejected[(envelope.target, "mailbox_full")] += 1
            self.dead_letter(envelope, "mailbox_full", "dropped newest")
            return
        cell.routed += 1
        if evicted is None:
            cell.in_flight += 1
        else:  # the new one in, the oldest out: as many in flight as before
            if evicted.reply is not None:
                evicted.reply.set_error(MailboxFull(evicted.target, cell.mailbox.config.capacity))
            self.dead_letter(evicted, "mailbox_full", "dropped oldest")

    def _refuse(self, envelope: Envelope, error: ActorError) -> NoReturn:
        self.rejected[(envelope.target, error.reason)] += 1
        raise error


def _deadline(timeout: float) -> float:
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return trio.current_time() + timeout


@attrs.define(eq=False)
class AskTimers:
    """Fails asks at their deadlines from one task, so that an ask costs a heap push
    rather than a cancel scope of its own."""

    _heap: list[tuple[float, int, Reply, str, float]] = attrs.field(factory=list)
    _scope: trio.CancelScope | None = None

    def add(self, deadline: float, reply: Reply, path: str, timeout: float) -> None:
        heap = self._heap
        if len(heap) > 4096 and len(heap) & 4095 == 0:
            # Answered asks linger until their deadline; drop them now and then.
            heap[:] = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, next_id(), reply, path, timeout))
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, reply, path, timeout = heapq.heappop(heap)
                if not reply.done:
                    reply.set_error(AskTimeout(path, timeout))
