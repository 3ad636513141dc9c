"""An actor cell: what stays of an actor across its runs (path, mailbox, rate buckets)
and the loop that runs each incarnation under its supervisor."""

from __future__ import annotations

import contextlib
import enum
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import outcome
import trio
from trio.lowlevel import wait_task_rescheduled

from supervision import ChildNotFound, ChildState, ChildView, Probe, ProbeKind, Supervisor

from ._actor import Actor, ActorRef
from ._bus import Event
from ._durable import EventStore
from ._envelope import Envelope, Reply, Source, _current, next_id
from ._exceptions import (
    ActorRestarting,
    ActorStopped,
    HandlerFailed,
)
from ._mailbox import Mailbox, Offer
from ._ratelimit import RateLimit, TokenBuckets

if TYPE_CHECKING:
    from ._hooks import CellHooks, RuntimeHooks
    from ._router import Router
    from ._runtime import _Subtree

_v = attrs.validators


@attrs.frozen
class HealthProbe:
    """How often to run an actor's ``liveness()`` or ``readiness()`` (or to check that a
    startup finished), with Kubernetes semantics. The check runs in the actor's task via
    its control lane, so a handler that hangs fails it by ``timeout``."""

    kind: ProbeKind = attrs.field(validator=_v.instance_of(ProbeKind))
    initial_delay: float = attrs.field(default=0.0, kw_only=True)
    period: float = attrs.field(default=10.0, kw_only=True)
    timeout: float = attrs.field(default=1.0, kw_only=True)
    success_threshold: int = attrs.field(default=1, kw_only=True)
    failure_threshold: int = attrs.field(default=3, kw_only=True)


class _Control(enum.Enum):
    LIVENESS = "liveness"
    READINESS = "readiness"
    STARTUP = "startup"
    PARK = "park"


@attrs.define(eq=False)
class _Lane:
    """A concurrency group of a concurrent actor: its limit, its handlers running and
    the messages it holds until one of them finishes (in arrival order)."""

    limit: int
    running: int = 0
    pending: deque[Envelope] = attrs.field(factory=deque)
    idle: list[trio.lowlevel.Task] = attrs.field(factory=list)
    """Handler tasks that finished and wait for the lane's next message: handing one a
    message costs a wake-up, not a new task (at most ``_IDLE_HANDLERS`` wait)."""

    def _forget_idle(self, task: trio.lowlevel.Task) -> Callable[[Any], trio.lowlevel.Abort]:
        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            self.idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    async def next_message(self) -> Envelope:
        """Wait, as an idle handler task, for the next message of this lane."""
        task = trio.lowlevel.current_task()
        self.idle.append(task)
        envelope: Envelope = await wait_task_rescheduled(self._forget_idle(task))
        return envelope

    def hand_over(self, envelope: Envelope) -> bool:
        """Give ``envelope`` to an idle handler task, if one waits."""
        if not self.idle:
            return False
        trio.lowlevel.reschedule(self.idle.pop(), outcome.Value(envelope))
        return True


# Yield to the scheduler at least this often when the mailbox never runs dry.
_BATCH = 64
_INF = math.inf
_RUNNING = ChildState.RUNNING
_BUS = Source.BUS
_NO_NURSERY: contextlib.nullcontext[None] = contextlib.nullcontext()
# Handler tasks of a concurrent actor that wait, idle, for the next message of a group.
_IDLE_HANDLERS = 16
# Unacknowledged durable events are read from the store this many at a time at most.
_REDELIVERY_PAGE = 256


@attrs.define(eq=False)
class ActorCell:
    path: str
    name: str
    node: _Subtree
    factory: Callable[[], Actor]
    mailbox: Mailbox
    rate_limit: RateLimit | None
    shutdown: float
    ref: ActorRef
    router: Router
    store: EventStore | None = None
    listener: RuntimeHooks | None = None
    """The runtime's hooks, told of each run started."""
    max_concurrency: int | None = None
    """Messages handled at once; None: the actor class's ``max_concurrency``."""
    hooks: CellHooks | None = attrs.field(default=None, init=False)
    """Set by the listener (the fault injector, when faults target this actor); None
    (the one check per message that the hooks cost) when nobody listens."""
    _buckets: TokenBuckets[Source | None] | None = attrs.field(default=None, init=False)
    """Made by the first message to an actor with a rate limit."""
    in_flight: int = attrs.field(default=0, init=False)
    handling: int = attrs.field(default=0, init=False)
    """Messages in a handler now (in_flight counts those waiting in the mailbox too)."""
    concurrency: int = attrs.field(default=1, init=False)
    """The current run's limit of messages handled at once (its default group)."""
    routed: int = attrs.field(default=0, init=False)
    actor: Actor | None = attrs.field(default=None, init=False)
    _queued_durable: set[int] | None = attrs.field(default=None, init=False)
    """Ids of durable events in the mailbox or in the handler, not to be queued twice."""
    redelivery_pending: bool = attrs.field(default=False, init=False)
    """Unacknowledged durable events may wait in the store: page them in as room frees."""
    _redelivered_up_to: int = attrs.field(default=0, init=False)
    """The store has been read up to this event id since ``redelivery_pending`` was set."""

    _view: ChildView | None = attrs.field(default=None, init=False)
    """The supervisor's live view of this actor's state (read per message, no call)."""
    _view_of: Supervisor | None = attrs.field(default=None, init=False)
    """The supervisor ``_view`` comes from: a subtree restart brings a new one."""
    _open_view: ChildView | None = attrs.field(default=None, init=False)
    """``_view`` when nothing but the actor's state decides its admission (no rate
    limit, not stopped); else None. A view whose supervisor is gone reads stopped (a
    supervisor settles every child before it closes), so it never admits wrongly."""
    _stopped: bool = attrs.field(default=False, init=False)

    @property
    def stopped(self) -> bool:
        """Stopped for good (``Runtime.stop``): every message is refused."""
        return self._stopped

    @stopped.setter
    def stopped(self, value: bool) -> None:
        self._stopped = value
        self._open_view = None

    @property
    def open(self) -> bool:
        """Running and ready, not stopped and without a rate limit: the router admits a
        message to it with no other check than its mailbox's room."""
        view = self._open_view
        return view is not None and view.state is _RUNNING and view.ready

    def supervision_status(self) -> tuple[ChildState, bool]:
        """The actor's state and readiness as its supervisor has them now."""
        supervisor = self.node.supervisor
        if supervisor is None:
            return ChildState.RESTARTING, False  # its subtree restarts
        view = self._view
        if view is None or self._view_of is not supervisor:
            try:
                view = supervisor.child_view(self.name)
            except ChildNotFound:
                return ChildState.STOPPED, False
            self._view, self._view_of = view, supervisor
            if self.rate_limit is None and not self._stopped:
                self._open_view = view
        return view.state, view.ready

    def durable_queued(self, event_id: int) -> bool:
        """Is this durable event in the mailbox or in the handler already?"""
        queued = self._queued_durable
        return queued is not None and event_id in queued

    def mark_durable_queued(self, event_id: int) -> None:
        if self._queued_durable is None:
            self._queued_durable = set()  # made when first needed: most actors never do
        self._queued_durable.add(event_id)

    def unmark_durable_queued(self, event_id: int) -> None:
        if self._queued_durable is not None:
            self._queued_durable.discard(event_id)

    def redeliver_later(self, event_id: int) -> None:
        """A durable event for this actor did not get into its mailbox (it was full, or
        the event was evicted): the running actor pages it in from the store, in this
        run, once its mailbox has room; a stopped one, at its next start."""
        self.unmark_durable_queued(event_id)
        self.redelivery_pending = True
        self._redelivered_up_to = min(self._redelivered_up_to, event_id - 1)

    def take_token(self, source: Source) -> float:
        """0.0 when admitted, else seconds until a token is there."""
        limit = self.rate_limit
        if limit is None:
            return 0.0
        buckets = self._buckets
        if buckets is None:
            buckets = self._buckets = TokenBuckets()
        return buckets.bucket(source if limit.per_source else None, limit).take()

    def supervision_probe(self, probe: HealthProbe) -> Probe:
        control = _Control(probe.kind.value)

        async def check() -> bool:
            reply = Reply()
            self.mailbox.put_control(
                Envelope(
                    next_id(),
                    Source.INTERNAL,
                    self.path,
                    control,
                    reply,
                    trio.current_time() + probe.timeout,
                    control=True,
                )
            )
            return bool(await reply.wait())

        return Probe(
            probe.kind,
            check,
            initial_delay=probe.initial_delay,
            period=probe.period,
            timeout=probe.timeout,
            success_threshold=probe.success_threshold,
            failure_threshold=probe.failure_threshold,
        )

    async def park(self, timeout: float) -> None:
        """Let the handler in flight finish, then hold the actor idle (for a stop)."""
        reply = Reply()
        deadline = trio.current_time() + timeout
        envelope = Envelope(
            next_id(), Source.INTERNAL, self.path, _Control.PARK, reply, deadline, control=True
        )
        self.mailbox.put_control(envelope)
        with trio.move_on_at(deadline):
            await reply.wait()

    async def run(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """The supervised child: one run of the actor (one coroutine frame for it all, as
        an idle actor's memory is mostly its frames)."""
        actor = self.factory()
        if not isinstance(actor, Actor):
            raise TypeError(
                f"the factory of actor {self.path!r} must return an Actor, got {actor!r}"
            )
        actor._ref = self.ref
        self.actor = actor
        nursery_or_not = trio.open_nursery() if actor.background_tasks else _NO_NURSERY
        try:
            async with nursery_or_not as nursery:
                if nursery is not None:
                    actor._nursery = nursery
                if self.hooks is not None:
                    await self.hooks.before_start(self)
                await actor.on_start()
                task_status.started(self.ref)
                del task_status  # an idle actor keeps no start-up state
                if self.listener is not None:
                    self.listener.started(self, actor)
                try:
                    if self.store is not None and actor.subscriptions():
                        # Everything unacknowledged, from the oldest: paged in by the loop.
                        self.redelivery_pending, self._redelivered_up_to = True, 0
                    else:
                        self.redelivery_pending = False
                    limit = self.concurrency = self.max_concurrency or actor.max_concurrency
                    if limit > 1 or actor.concurrency_groups:
                        await self._serve_concurrently(actor, limit)
                        return
                    # The loop of an actor that handles one message at a time, here
                    # rather than in a coroutine of its own: a frame less per actor.
                    mailbox = self.mailbox
                    capacity = mailbox.config.capacity
                    handled = 0
                    while True:
                        # Below a quarter full, page the backlog in (the test inline:
                        # no coroutine per message while there is nothing to page).
                        if self.redelivery_pending and len(mailbox) * 4 < capacity:
                            await self._page_in()
                        envelope = mailbox.pop()
                        if envelope is None:  # both lanes empty: park until one comes
                            await wait_task_rescheduled(mailbox.park_reader())
                            handled = 0
                            continue
                        handled += 1
                        if handled >= _BATCH:  # an endless backlog must not starve others
                            handled = 0
                            await trio.lowlevel.checkpoint()
                        if envelope.control:
                            await self._control(actor, envelope)
                        elif (
                            self.hooks is None
                            and envelope.source is not _BUS
                            and (
                                envelope.deadline == _INF or envelope.deadline > trio.current_time()
                            )
                        ):
                            # What `_handle` does for a direct message with no fault
                            # hooks, in this frame: a coroutine less per message.
                            reply = envelope.reply
                            self.handling += 1
                            token = _current.set(envelope)
                            try:
                                try:
                                    result = await actor.receive(envelope.payload)
                                except BaseException as exc:
                                    self._failed(envelope, exc)
                                    raise
                                finally:
                                    _current.reset(token)
                                if reply is not None and not reply.set_value(result):
                                    self.router.answered_late(envelope)
                            finally:
                                self.in_flight -= 1
                                self.handling -= 1
                        else:
                            await self._handle(actor, envelope)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(self.shutdown):
                        await actor.on_stop()
        except BaseExceptionGroup as group:
            if nursery_or_not is _NO_NURSERY:
                raise  # not ours to unwrap
            # One failure (a handler or a background task): record it as itself.
            # One failure, perhaps seen by two tasks (a dead plugin process breaks both
            # its pipe and its watcher): record it as itself.
            _, rest = group.split(trio.Cancelled)
            if rest is not None and len({type(e) for e in rest.exceptions}) == 1:
                raise rest.exceptions[0] from None
            raise

    async def _page_in(self) -> None:
        """Page the durable backlog in up to half the mailbox: a few reads of hundreds of
        events each, not one per event handled. The loops call it when the mailbox is
        below a quarter full."""
        mailbox = self.mailbox
        capacity = mailbox.config.capacity
        while self.redelivery_pending and len(mailbox) * 2 < capacity:
            await self._redeliver_page()

    async def _redeliver_page(self) -> None:
        """Queue the next page of this actor's unacknowledged durable events (left by a
        crash of the actor or of the runtime, or refused by a full mailbox), oldest
        first, skipping those already queued.

        Redelivered events fill at most half of the mailbox: the other half stays free
        for new events, which keep flowing meanwhile, interleaved with the backlog. The
        pages go on, as the mailbox drains, until the store has nothing more: no event
        waits for another restart of the actor.
        """
        assert self.store is not None
        capacity = self.mailbox.config.capacity
        room = (capacity + 1) // 2 - len(self.mailbox)
        if room <= 0:
            return
        wanted = min(room, _REDELIVERY_PAGE)
        # Cleared before the read: an event refused while we wait sets it again.
        self.redelivery_pending = False
        page = await self.store.unacked(self.path, after=self._redelivered_up_to, limit=wanted)
        for stored in page:
            if not self.durable_queued(stored.id):
                event = Event(
                    stored.id, stored.topic, stored.payload, stored.published_at,
                    stored.source, durable=True,
                )  # fmt: skip
                envelope = Envelope(next_id(), Source.BUS, self.path, event)
                # Never into a full mailbox: its overflow policy could evict a message.
                if self.mailbox.full or self.mailbox.offer(envelope)[0] is not Offer.ACCEPTED:
                    self.redelivery_pending = True  # room was taken meanwhile: next time
                    return
                self.in_flight += 1
                self.mark_durable_queued(stored.id)
            self._redelivered_up_to = max(self._redelivered_up_to, stored.id)
        if len(page) == wanted:
            self.redelivery_pending = True  # a full page: there may be more

    async def _serve_concurrently(self, actor: Actor, limit: int) -> None:
        """The loop of an actor that handles up to ``limit`` messages at once (plus its
        groups' own limits), each in a task of its own; control messages (probes) are
        answered beside the handlers, never behind them.

        A message whose group is full waits in that group's lane, in arrival order; it
        still counts against the mailbox's capacity (``Mailbox.held``), so the bound and
        the overflow policy hold as with one handler. At the end of the run (a crash, a
        restart, a stop) the lanes go back to the front of the mailbox, in order.
        """
        mailbox = self.mailbox
        capacity = mailbox.config.capacity
        lanes: dict[str | None, _Lane] = {None: _Lane(limit)}
        for group, group_limit in actor.concurrency_groups.items():
            lanes[group] = _Lane(group_limit)
        events = _Lane(1)  # bus events: one at a time, in the order they were published
        everything = [*lanes.values(), events]
        parked: Envelope | None = None
        handled = 0

        def lane_of(envelope: Envelope) -> _Lane:
            payload = envelope.payload
            if (
                envelope.source is Source.BUS
                and isinstance(payload, Event)
                and actor.events_in_order(payload)
            ):
                return events
            if len(lanes) == 1:
                return lanes[None]
            group = actor.concurrency_group(envelope.payload)
            lane = lanes.get(group)
            if lane is None:
                raise ValueError(
                    f"{type(actor).__name__}.concurrency_group() returned {group!r}, which"
                    f" is not one of its concurrency_groups ({', '.join(map(str, lanes))})"
                )
            return lane

        async def run(lane: _Lane, envelope: Envelope) -> None:
            while True:
                reply = envelope.reply
                # An ask's handler ends with its deadline, or when its asker gives up.
                with trio.CancelScope(
                    deadline=envelope.deadline if reply is not None else math.inf
                ) as scope:
                    if reply is not None:
                        reply.handler_scope = scope
                    await self._handle(actor, envelope)
                if lane.pending:
                    envelope = lane.pending.popleft()
                    mailbox.release_held()
                    continue
                lane.running -= 1
                if parked is not None:
                    mailbox.wake()
                    return
                if len(lane.idle) >= _IDLE_HANDLERS:
                    return
                envelope = await lane.next_message()  # `running` was counted for it

        try:
            async with trio.open_nursery() as nursery:
                while True:
                    if parked is not None:
                        if not any(lane.running for lane in everything):
                            assert parked.reply is not None
                            parked.reply.set_value(True)
                            await trio.sleep_forever()
                        envelope = mailbox.pop_control()
                    else:
                        if self.redelivery_pending and len(mailbox) * 4 < capacity:
                            await self._page_in()  # below a quarter full, as in `run`
                        envelope = mailbox.pop()
                    if envelope is None:
                        await mailbox.wait(control_only=parked is not None)
                        handled = 0
                        continue
                    handled += 1
                    if handled >= _BATCH:  # a backlog that never empties must not starve
                        handled = 0
                        await trio.lowlevel.checkpoint()
                    if envelope.control:
                        if envelope.payload is _Control.PARK:
                            parked = envelope  # the handlers in flight finish first
                            for lane in everything:
                                mailbox.requeue(lane.pending)
                                lane.pending.clear()
                        else:
                            nursery.start_soon(self._control, actor, envelope)
                        continue
                    try:
                        lane = lane_of(envelope)
                    except Exception as exc:
                        if envelope.reply is not None:
                            failure = HandlerFailed(self.path, exc)
                            failure.__cause__ = exc
                            envelope.reply.set_error(failure)
                        raise
                    if lane.running < lane.limit:
                        lane.running += 1
                        if not lane.hand_over(envelope):
                            nursery.start_soon(run, lane, envelope)
                    else:
                        lane.pending.append(envelope)
                        mailbox.hold()
        except BaseExceptionGroup as group:
            # One handler crashed and the others were cancelled: record it as itself.
            _, rest = group.split(trio.Cancelled)
            if rest is not None and len(rest.exceptions) == 1:
                raise rest.exceptions[0] from None
            raise
        finally:
            # What waited in a lane is handled by the next run, before what came later.
            waiting = sorted(
                (envelope for lane in everything for envelope in lane.pending),
                key=lambda envelope: envelope.id,
            )
            mailbox.requeue(waiting)

    async def _handle(self, actor: Actor, envelope: Envelope) -> None:
        reply = envelope.reply
        self.handling += 1
        try:
            deadline = envelope.deadline
            if deadline != math.inf and deadline <= trio.current_time():
                self.router.expired(envelope)
                return
            token = _current.set(envelope)
            try:
                if self.hooks is not None and await self.hooks.before_message(self, envelope):
                    return  # dropped, or failed by error_rate: the actor never sees it
                payload = envelope.payload
                if envelope.source is Source.BUS and isinstance(payload, Event):
                    await actor._dispatch_event(payload)
                    if payload.durable and self.store is not None:
                        # Shielded: a handled event whose ack is lost is handled twice.
                        with trio.CancelScope(shield=True):
                            await self.store.ack(payload.id, self.path)
                    result = None
                else:
                    result = await actor.receive(payload)
            except BaseException as exc:
                self._failed(envelope, exc)
                raise
            finally:
                _current.reset(token)
            if reply is not None and not reply.set_value(result):
                self.router.answered_late(envelope)
        finally:
            self.in_flight -= 1
            self.handling -= 1
            if envelope.source is Source.BUS:
                event = envelope.payload
                if isinstance(event, Event) and event.durable:
                    # Handled and acknowledged, or not (a crash: the next start redelivers).
                    self.unmark_durable_queued(event.id)

    def _failed(self, envelope: Envelope, exc: BaseException) -> None:
        """Tell the asker, if any, that the handler of ``envelope`` did not answer."""
        reply = envelope.reply
        if reply is None:
            return
        if isinstance(exc, trio.Cancelled):
            # A handler cancelled at its ask's deadline: the asker's timer tells it
            # (AskTimeout), at the same moment.
            if envelope.deadline > trio.current_time():
                error = ActorStopped if self.stopped else ActorRestarting
                reply.set_error(error(self.path))
            return
        failure = HandlerFailed(self.path, exc)
        failure.__cause__ = exc
        if not reply.set_error(failure):
            self.router.answered_late(envelope)

    async def _control(self, actor: Actor, envelope: Envelope) -> None:
        reply = envelope.reply
        assert reply is not None
        if envelope.deadline <= trio.current_time():
            return  # a probe that already timed out: its answer is of no use
        kind = envelope.payload
        if kind is _Control.PARK:
            reply.set_value(True)
            await trio.sleep_forever()
        try:
            if kind is _Control.LIVENESS:
                reply.set_value(await actor.liveness())
            elif kind is _Control.READINESS:
                reply.set_value(await actor.readiness())
            else:
                reply.set_value(True)  # startup: the loop answers, so on_start finished
        except Exception as exc:  # noqa: BLE001 - a raising check is a failing check
            reply.set_error(exc)
