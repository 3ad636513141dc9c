"""The supervisor: it owns children, restarts them by strategy and stops them in order.

How it is built, so that the rules below stay easy to check:

- Children run in a *host* nursery that a system task opens for each supervisor. A child
  that ignores cancellation past its shutdown deadline can then be abandoned to that
  host, which outlives the supervisor, while ``open_supervisor`` still returns.
- Every change to the set of children (start, stop, restart, delete, the reaction to an
  exit) happens under one lock, so a group restart is never interleaved with another
  operation. Waiting for a backoff delay happens outside the lock.
- A child's exit is handled by the tail of the task that ran it, so a restart costs one
  lock acquisition and one ``nursery.start``.
- Operations register a cancel scope; closing or failing the supervisor cancels them all,
  so no start or backoff wait outlives it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

import attrs
import trio

from . import _validate
from ._exceptions import (
    ChildNotFound,
    ChildQuarantined,
    ChildRunning,
    ChildStartFailed,
    DuplicateChild,
    RestartIntensityExceeded,
    SupervisorClosed,
)
from ._probes import ProbeCallbacks, ProbeKind, ProbeTracker, run_probes
from ._spec import ChildSpec, OnExhausted, Restart, Strategy
from ._stats import (
    ChildInfo,
    ChildState,
    ChildStatistics,
    ChildView,
    ExitKind,
    ExitReason,
    SupervisorState,
    SupervisorStatistics,
)

_log = logging.getLogger("supervision")
"""Crashes and restarts at WARNING, a quarantine at WARNING, a supervisor that gives up
at ERROR. Each record's ``extra`` carries ``supervisor`` (its name) and ``child`` (the
child's id), and what the event is about (``reason``, ``backoff``, ``state``...)."""


_NO_TRACKERS: Mapping[ProbeKind, ProbeTracker] = MappingProxyType({})


@attrs.define(eq=False)
class _Run:
    """One run of a child: from its start function being called to its exit."""

    number: int
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    probe_scope: trio.CancelScope | None = None
    """Made by the probe task, if the child has probes (most have none)."""
    probes_off: bool = False
    finished: bool = False
    """The run's task has exited (``exit`` is set)."""
    _done: trio.Event | None = None
    """Made when someone waits for the exit: an idle child carries no Event."""
    task: trio.lowlevel.Task | None = None
    started: bool = False
    started_at: float | None = None
    value: Any = None
    kill: ExitReason | None = None
    """Why the supervisor cancelled it; recorded if the cancellation ends it."""
    stopper_handles: bool = False
    """Whoever cancelled it records the exit and decides what follows."""
    exit: ExitReason | None = None
    abandoned: bool = False
    detached: bool = False
    """Started without a starter waiting (a restart): its tail reports a failed start."""

    def cancel_probes(self) -> None:
        self.probes_off = True
        if self.probe_scope is not None:
            self.probe_scope.cancel()

    def mark_finished(self) -> None:
        self.finished = True
        if self._done is not None:
            self._done.set()

    async def wait_finished(self) -> None:
        if self._done is None:
            self._done = trio.Event()
            if self.finished:
                self._done.set()
        await self._done.wait()


@attrs.define(eq=False)
class _Plan:
    """Children to start again, in order, after ``delay`` seconds."""

    children: list[_Child]
    delay: float


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    run: _Run | None = None
    runs: int = 0
    restarts: int = 0
    budget: deque[float] | None = None  # made on the first restart: most never need one
    attempt: int = 0
    backoff: float = 0.0
    last_exit: ExitReason | None = None
    ready: bool = False
    trackers: Mapping[ProbeKind, ProbeTracker] = _NO_TRACKERS
    changed: trio.Event | None = None
    """Made by a waiter (``wait_ready``); set and dropped by the next change."""
    pending: _Plan | None = None
    last_restart_at: float | None = None


class _StartError(Exception):
    def __init__(self, reason: ExitReason) -> None:
        super().__init__(str(reason))
        self.reason = reason


class _ReturnedBeforeStarted(Exception):
    pass


_RETURNED_BEFORE_STARTED = "start function returned before calling task_status.started()"


@attrs.define(eq=False)
class _ChildTaskStatus:
    """The ``task_status`` a child's start function gets: it tells the supervisor too."""

    _supervisor: Supervisor
    _child: _Child
    _run: _Run
    _outer: trio.TaskStatus[Any] | None

    def started(self, value: Any = None) -> None:
        outer = self._outer
        if self._run.started or outer is None:
            raise RuntimeError("called 'started' twice on the same task status")
        self._supervisor._child_started(self._child, self._run, value)
        # Let go of nursery.start's status, which holds its temporary nursery: a child
        # keeps this object as long as it runs, and an idle one should not keep that.
        self._outer = None
        outer.started(value)


class _Operation:
    """A supervisor's operation: a cancel scope that closing or failing the supervisor
    cancels (a class rather than a generator context manager: every restart has one)."""

    __slots__ = ("_scope", "_supervisor")

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._scope = trio.CancelScope()

    def __enter__(self) -> trio.CancelScope:
        scope = self._scope.__enter__()
        if self._supervisor._state is not SupervisorState.RUNNING:
            scope.cancel()
        self._supervisor._ops.add(scope)
        return scope

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._supervisor._ops.discard(self._scope)
        return self._scope.__exit__(kind, error, traceback)


def _reason_for(exc: BaseException) -> ExitReason:
    kind = ExitKind.ESCALATED if isinstance(exc, RestartIntensityExceeded) else ExitKind.EXCEPTION
    return ExitReason(kind, trio.current_time(), type(exc).__qualname__, str(exc))


def _over_budget(times: deque[float], now: float, max_restarts: int, period: float) -> bool:
    """Record a restart at ``now``; True if more than max_restarts fall within period."""
    times.append(now)
    while times and times[0] <= now - period:
        times.popleft()
    return len(times) > max_restarts


@attrs.define(eq=False)
class Supervisor:
    """Owns children and keeps them running by its strategy. Open one with
    :func:`open_supervisor`; every method may be called from any task of the same run."""

    name: str
    strategy: Strategy
    max_restarts: int
    period: float
    _rng: random.Random
    _state: SupervisorState = attrs.field(default=SupervisorState.RUNNING, init=False)
    _failure: BaseException | None = attrs.field(default=None, init=False)
    _children: dict[str, _Child] = attrs.field(factory=dict, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _ops: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    _window: deque[float] = attrs.field(factory=deque, init=False)
    _restarts: int = attrs.field(default=0, init=False)
    _abandoned: int = attrs.field(default=0, init=False)
    _body_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _host_nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _host_release: trio.Event = attrs.field(factory=trio.Event, init=False)
    _host_done: trio.Event = attrs.field(factory=trio.Event, init=False)

    # ----------------------------------------------------------------- public API

    @property
    def state(self) -> SupervisorState:
        """Where the supervisor is in its lifecycle."""
        return self._state

    async def start_child(self, spec: ChildSpec) -> Any:
        """Start a child after the existing ones and wait until it calls started().

        Returns:
            The value the child passed to ``task_status.started()``.

        Raises:
            DuplicateChild: a child with ``spec.id`` exists.
            ChildStartFailed: the start function raised or returned before started();
                the child is not added.
            SupervisorClosed: the supervisor is not running.
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child() expects a ChildSpec, got {type(spec).__name__}")
        self._check_running()
        with self._operation():
            async with self._lock:
                self._check_running()
                if spec.id in self._children:
                    raise DuplicateChild(spec.id, self.name)
                child = _Child(spec)
                self._children[spec.id] = child
                added = False
                try:
                    value = await self._start(child)
                    added = True
                    return value
                except _StartError as err:
                    raise ChildStartFailed(spec.id, str(err.reason)) from err.__cause__
                finally:
                    if not added:
                        self._remove(child)
        raise self._closed_error()

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child (its exit is recorded as ``cancelled``) and keep its spec, so that
        ``restart_child`` can start it again. A temporary child is deleted."""
        with self._operation():
            async with self._lock:
                child = self._get(child_id)
                self._refuse_self_stop(child)
                await self._stop(child, self._cancel_reason("terminated"))
                if child.spec.restart is Restart.TEMPORARY:
                    self._remove(child)
                return
        raise self._closed_error()

    async def restart_child(self, child_id: str) -> Any:
        """Stop a child if it runs, then start it again; return its started() value.

        Unlike OTP's restart_child, which refuses a running child, this restarts it: it is
        what an operator's "restart" means. It does not count toward the intensity.

        Raises:
            ChildQuarantined: use clear_quarantine() instead.
            ChildStartFailed: its start function failed; it stays stopped.
        """
        with self._operation():
            async with self._lock:
                child = self._get(child_id)
                if child.state is ChildState.QUARANTINED:
                    raise ChildQuarantined(child_id)
                self._refuse_self_stop(child)
                _log.info("restarting %s on request", self._where(child), extra=self._fields(child))
                await self._stop(child, self._cancel_reason("restart requested"))
                return await self._start_or_raise(child)
        raise self._closed_error()

    async def delete_child(self, child_id: str) -> None:
        """Forget a stopped (terminated or quarantined) child's spec, as OTP's
        ``delete_child`` does: a group restart no longer starts it, and its id is free.

        Raises:
            ChildRunning: the child is not stopped; ``terminate_child()`` it first, or
                use ``remove_child()``.
        """
        with self._operation():
            async with self._lock:
                child = self._get(child_id)
                if child.state not in (ChildState.STOPPED, ChildState.QUARANTINED):
                    raise ChildRunning(child_id, self.name, child.state.value)
                self._remove(child)
                return
        raise self._closed_error()

    async def remove_child(self, child_id: str) -> None:
        """Stop a child if it runs, then forget it: ``terminate_child`` and
        ``delete_child`` in one step, so that no restart can come between them."""
        with self._operation():
            async with self._lock:
                child = self._get(child_id)
                self._refuse_self_stop(child)
                await self._stop(child, self._cancel_reason("removed"))
                self._remove(child)
                return
        raise self._closed_error()

    async def clear_quarantine(self, child_id: str) -> Any:
        """Start a quarantined child again with a fresh restart budget and backoff.

        Raises:
            ValueError: the child is not quarantined.
            ChildStartFailed: its start function failed; it stays stopped.
        """
        with self._operation():
            async with self._lock:
                child = self._get(child_id)
                if child.state is not ChildState.QUARANTINED:
                    raise ValueError(
                        f"child {child_id!r} is not quarantined (it is {child.state.value})"
                    )
                child.budget = None
                child.attempt = 0
                _log.info(
                    "%s: quarantine cleared, starting it again",
                    self._where(child),
                    extra=self._fields(child),
                )
                return await self._start_or_raise(child)
        raise self._closed_error()

    async def wait_ready(self, child_id: str) -> Any:
        """Wait until the child is running and ready (its startup probe passed and its
        readiness probe passes); return its started() value.

        Raises:
            ChildNotFound: no such child, or it was deleted while waiting.
            ChildQuarantined: it will not become ready without clear_quarantine().
            SupervisorClosed: the supervisor stopped while waiting.
        """
        while True:
            child = self._get(child_id)
            if child.ready and child.run is not None:
                return child.run.value
            if child.state is ChildState.QUARANTINED:
                raise ChildQuarantined(child_id)
            if self._state is not SupervisorState.RUNNING:
                raise self._closed_error()
            if child.changed is None:
                child.changed = trio.Event()
            await child.changed.wait()

    def child_status(self, child_id: str) -> tuple[ChildState, bool]:
        """The child's state and ready flag, cheaply (for a router's hot path).

        Raises:
            ChildNotFound: no such child.
        """
        child = self._get(child_id)
        return child.state, child.ready

    def child_view(self, child_id: str) -> ChildView:
        """A live view of the child's state and ready flag, for a hot path that checks
        them per message (an actor router): it follows the child through its restarts
        while the child stays in this supervisor; once removed, it reads ``stopped``.

        Raises:
            ChildNotFound: no such child.
        """
        return self._get(child_id)

    def which_children(self) -> tuple[ChildInfo, ...]:
        """Every child in start order, with the value it passed to started()."""
        return tuple(
            ChildInfo(
                id=child.spec.id,
                state=child.state,
                restart=child.spec.restart,
                value=child.run.value if child.run is not None and child.run.started else None,
            )
            for child in self._children.values()
        )

    def statistics(self) -> SupervisorStatistics:
        """A frozen snapshot of the supervisor and its children."""
        now = trio.current_time()
        state = self._state
        return SupervisorStatistics(
            name=self.name,
            strategy=self.strategy,
            state=state,
            max_restarts=self.max_restarts,
            period=self.period,
            restarts=self._restarts,
            recent_restarts=sum(1 for t in self._window if t > now - self.period),
            abandoned=self._abandoned,
            children=tuple(self._child_statistics(c) for c in self._children.values()),
        )

    # ------------------------------------------------------------ running children

    def _new_run(self, child: _Child) -> _Run:
        run = _Run(number=child.runs + 1)
        child.runs += 1
        child.run = run
        child.state = ChildState.STARTING
        child.ready = False
        child.trackers = _NO_TRACKERS
        self._notify(child)
        return run

    def _start_detached(self, child: _Child) -> None:
        """Start one run of the child in its own task without waiting for it to call
        started() (lock held): a restart, whose caller wants no value. The run's own
        tail reports a failure to start, as it reports a crash."""
        run = self._new_run(child)
        run.detached = True
        self._host.start_soon(self._run_child, child, run, name=child.spec.id)

    async def _start(self, child: _Child) -> Any:
        """Start one run of the child (lock held). Raises _StartError."""
        run = self._new_run(child)
        try:
            return await self._host.start(self._run_child, child, run, name=child.spec.id)
        except Exception as exc:
            reason = _reason_for(exc)
            if isinstance(exc, _ReturnedBeforeStarted):
                reason = attrs.evolve(reason, exception_type=None, message=_RETURNED_BEFORE_STARTED)
            self._settle_exit(child, reason)
            raise _StartError(reason) from exc
        except BaseException:
            self._settle_exit(child, self._cancel_reason("start interrupted"))
            raise

    async def _start_or_raise(self, child: _Child) -> Any:
        try:
            return await self._start(child)
        except _StartError as err:
            raise ChildStartFailed(child.spec.id, str(err.reason)) from err.__cause__

    async def _run_child(
        self, child: _Child, run: _Run, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        run.task = trio.lowlevel.current_task()
        reason: ExitReason | None = None
        try:
            with run.scope:
                try:
                    # Only the child holds its status (no local here), and the status lets
                    # go of nursery.start's once started: an idle child keeps neither.
                    child_run = child.spec.start(
                        task_status=_ChildTaskStatus(self, child, run, task_status)
                    )
                    del task_status
                    await child_run
                except trio.Cancelled:
                    raise
                except BaseException as exc:
                    if isinstance(exc, BaseExceptionGroup):
                        _, rest = exc.split(trio.Cancelled)
                        if rest is None:
                            raise  # only cancellations: let the cancel scopes take them
                        exc = rest
                    if not run.started and not run.detached:
                        raise  # nursery.start hands it to the starter
                    reason = _reason_for(exc)
                else:
                    if not run.started and not run.detached:
                        raise _ReturnedBeforeStarted
                    reason = (
                        ExitReason(ExitKind.NORMAL, trio.current_time())
                        if run.started
                        else attrs.evolve(
                            _reason_for(_ReturnedBeforeStarted()),
                            exception_type=None,
                            message=_RETURNED_BEFORE_STARTED,
                        )
                    )
            if reason is None:  # our cancellation ended it
                reason = run.kill or self._cancel_reason("cancelled")
        finally:
            run.cancel_probes()
            run.exit = reason
            run.mark_finished()
        if run.abandoned:
            self._abandoned -= 1
            return
        if run.stopper_handles or child.run is not run:
            return
        child.ready = False
        self._notify(child)
        await self._handle_exit(child, run, reason)

    def _child_started(self, child: _Child, run: _Run, value: Any) -> None:
        run.started = True
        run.value = value
        run.started_at = trio.current_time()
        child.state = ChildState.RUNNING
        if child.spec.probes:
            child.trackers = {probe.kind: ProbeTracker(probe) for probe in child.spec.probes}
        # Ready at once unless a startup or readiness probe has a say (Kubernetes).
        child.ready = not (
            ProbeKind.STARTUP in child.trackers or ProbeKind.READINESS in child.trackers
        )
        if child.trackers:
            self._host.start_soon(self._probe_child, child, run)
        self._notify(child)

    async def _probe_child(self, child: _Child, run: _Run) -> None:
        def set_ready(ready: bool) -> None:
            if child.run is run and run.kill is None:
                child.ready = ready
                self._notify(child)

        async def failed(kind: ProbeKind, message: str) -> None:
            await self._probe_failed(child, run, message)

        with trio.CancelScope() as run.probe_scope:
            if run.probes_off:
                return  # the run ended before this task began
            await run_probes(child.trackers, ProbeCallbacks(set_ready=set_ready, failed=failed))

    async def _probe_failed(self, child: _Child, run: _Run, message: str) -> None:
        """A startup or liveness probe failed: cancel the run; its tail restarts it. If it
        ignores the cancellation past its shutdown deadline, abandon it and restart."""
        if run.kill is not None or run.finished:
            return
        run.kill = ExitReason(ExitKind.LIVENESS, trio.current_time(), None, message)
        child.ready = False
        self._notify(child)
        run.scope.cancel()
        with trio.move_on_after(child.spec.shutdown):
            await run.wait_finished()  # its tail cancels this probe task
            return
        run.abandoned = True
        self._abandoned += 1
        reason = ExitReason(
            ExitKind.SHUTDOWN_TIMEOUT,
            trio.current_time(),
            None,
            f"{message}; still running {child.spec.shutdown:g}s after cancellation; abandoned",
        )
        # A fresh task: this one lives in the run's probe scope, which the abandoned
        # run's tail cancels if it ever ends.
        self._host.start_soon(self._handle_exit, child, run, reason)

    # ------------------------------------------------------------ reacting to exits

    async def _handle_exit(self, child: _Child, run: _Run, reason: ExitReason) -> None:
        plan = None
        with self._operation():
            # The lock without a checkpoint when it is free: this task is the crashed
            # child's tail, and a restart is one scheduling round shorter for it.
            if self._lock.locked():
                await self._lock.acquire()
            else:
                self._lock.acquire_nowait()
            try:
                if child.run is not run or run.stopper_handles:
                    return  # stale: someone else already dealt with this run
                self._log_exit(child, reason, "crashed" if run.started else "failed to start")
                if not self._restarts_after(child.spec.restart, reason):
                    self._settle_exit(child, reason)
                    if child.spec.restart is Restart.TEMPORARY:
                        self._remove(child)
                    return
                self._settle_exit(child, reason)
                plan = await self._plan_restart(child, run if run.started else None)
                # No backoff: start it again now, under this same acquisition.
                while plan is not None and plan.delay <= 0:
                    plan = await self._start_planned(plan)
            finally:
                self._lock.release()
        if plan is not None:
            await self._carry_out(plan)

    @staticmethod
    def _restarts_after(restart: Restart, reason: ExitReason) -> bool:
        if restart is Restart.PERMANENT:
            return True
        if restart is Restart.TRANSIENT:
            return reason.abnormal
        return False

    async def _plan_restart(self, child: _Child, run: _Run | None) -> _Plan | None:
        """Decide what a restart of ``child`` entails (lock held): quarantine, failure of
        the supervisor, or stopping the siblings the strategy names and a plan to start
        them again."""
        now = trio.current_time()
        if child.spec.on_exhausted is OnExhausted.QUARANTINE:
            if child.budget is None:
                child.budget = deque()
            if _over_budget(child.budget, now, self.max_restarts, self.period):
                child.state = ChildState.QUARANTINED
                self._notify(child)
                _log.warning(
                    "%s quarantined: more than %d restarts within %g s; it stays stopped"
                    " until its quarantine is cleared",
                    self._where(child), self.max_restarts, self.period,
                    extra=self._fields(child, state="quarantined", max_restarts=self.max_restarts,
                                       period=self.period),
                )  # fmt: skip
                return None
        else:
            self._restarts += 1
            if _over_budget(self._window, now, self.max_restarts, self.period):
                _log.error(
                    "supervisor %s gave up: more than %d restarts within %g s, the last of %s;"
                    " it stops its children and escalates",
                    self.name, self.max_restarts, self.period, self._where(child),
                    extra=self._fields(child, state="escalated", max_restarts=self.max_restarts,
                                       period=self.period),
                )  # fmt: skip
                await self._fail(
                    RestartIntensityExceeded(
                        self.name, len(self._window), self.period, child.spec.id
                    )
                )
                return None
        targets = self._restart_targets(child)
        for other in reversed(targets):
            if other is not child:
                await self._stop(other, self._cancel_reason(f"group restart ({child.spec.id!r})"))
        for other in targets:
            if other is not child and other.spec.restart is Restart.TEMPORARY:
                self._remove(other)
        targets = [c for c in targets if c is child or c.spec.restart is not Restart.TEMPORARY]
        plan = _Plan(targets, self._backoff_delay(child, run, now))
        for target in targets:
            target.restarts += 1
            target.last_restart_at = now
            target.state = ChildState.RESTARTING
            target.pending = plan
            self._notify(target)
        self._log_restart(child, plan)
        return plan

    def _log_restart(self, child: _Child, plan: _Plan) -> None:
        if not _log.isEnabledFor(logging.WARNING):
            return  # its fields are not free to build
        others = [self._where(target) for target in plan.children if target is not child]
        group = f" with {', '.join(others)} ({self.strategy.value})" if others else ""
        _log.warning(
            "restarting %s in %.2f s%s (restart %d)",
            self._where(child), plan.delay, group, child.restarts,
            extra=self._fields(child, backoff=round(plan.delay, 3), restarts=child.restarts,
                               **({"group": [t.spec.id for t in plan.children]} if others else {})),
        )  # fmt: skip

    def _log_exit(self, child: _Child, reason: ExitReason, verb: str) -> None:
        """One line per exit the supervisor reacts to: a crash at WARNING, a normal exit
        (a permanent child returned) at DEBUG."""
        level = logging.WARNING if reason.abnormal else logging.DEBUG
        if _log.isEnabledFor(level):
            _log.log(
                level,
                "%s %s: %s",
                self._where(child), verb if reason.abnormal else "exited", reason,
                extra=self._fields(child, reason=str(reason), exit_kind=reason.kind.value),
            )  # fmt: skip

    def _restart_targets(self, child: _Child) -> list[_Child]:
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [child]
        children = list(self._children.values())
        if self.strategy is Strategy.REST_FOR_ONE:
            children = children[children.index(child) :]
        return [c for c in children if c.state is not ChildState.QUARANTINED or c is child]

    def _backoff_delay(self, child: _Child, run: _Run | None, now: float) -> float:
        backoff = child.spec.backoff
        if backoff is None:
            return 0.0
        started_at = run.started_at if run is not None else None
        if started_at is not None and now - started_at >= backoff.reset_after:
            child.attempt = 0
        child.backoff = backoff.delay(child.attempt, self._rng)
        child.attempt += 1
        return child.backoff

    async def _carry_out(self, plan: _Plan | None) -> None:
        """Wait out the plan's delay (outside the lock), then start its children in order.
        A start that fails is handled like a crash, which may make a new plan."""
        while plan is not None:
            current, plan = plan, None
            with self._operation():
                if current.delay > 0:
                    await trio.sleep(current.delay)
                async with self._lock:
                    plan = await self._start_planned(current)

    async def _start_planned(self, plan: _Plan) -> _Plan | None:
        if self._state is not SupervisorState.RUNNING:
            return None
        for child in plan.children:
            if child.pending is not plan or self._children.get(child.spec.id) is not child:
                continue  # terminated, deleted or re-planned meanwhile
            child.pending = None
            if len(plan.children) == 1:
                # Alone, it need not be waited for (a group starts in order, each once
                # the one before it has started): the lock is free again at once.
                self._start_detached(child)
                return None
            try:
                await self._start(child)
            except _StartError as err:
                self._log_exit(child, err.reason, "failed to start")
                return await self._plan_restart(child, None)
        return None

    # ------------------------------------------------------------ stopping

    async def _stop(self, child: _Child, reason: ExitReason) -> None:
        """Stop the child's run, if any, within its shutdown deadline (lock held).

        The wait is shielded: it is bounded by the deadline, and a stop cut short would
        leave a child half-stopped."""
        child.pending = None
        run = child.run
        if run is None:
            child.state = ChildState.STOPPED
            self._notify(child)
            return
        run.stopper_handles = True
        if run.kill is None:
            run.kill = reason
        child.state = ChildState.STOPPING
        child.ready = False
        self._notify(child)
        run.scope.cancel()
        run.cancel_probes()
        with trio.CancelScope(shield=True), trio.move_on_after(child.spec.shutdown):
            await run.wait_finished()
        if run.finished:
            final = run.exit or reason
        else:
            run.abandoned = True
            self._abandoned += 1
            final = ExitReason(
                ExitKind.SHUTDOWN_TIMEOUT,
                trio.current_time(),
                None,
                f"still running {child.spec.shutdown:g}s after it was cancelled; abandoned",
            )
        self._settle_exit(child, final)

    async def _stop_all(self, reason: ExitReason) -> None:
        for child in reversed(list(self._children.values())):
            await self._stop(child, reason)

    async def _fail(self, error: BaseException) -> None:
        """Give up (lock held): stop every child in reverse order, cancel pending work and
        the body of ``open_supervisor``, which then raises ``error``."""
        self._state = SupervisorState.FAILED
        self._failure = error
        await self._stop_all(ExitReason(ExitKind.ESCALATED, trio.current_time(), None, str(error)))
        self._cancel_operations()
        self._body_scope.cancel()

    async def _close(self) -> None:
        """Stop everything; called shielded when the body of open_supervisor ends."""
        if self._state is SupervisorState.RUNNING:
            self._state = SupervisorState.STOPPING
        self._cancel_operations()
        async with self._lock:
            await self._stop_all(self._cancel_reason("supervisor shutdown"))
        if self._state is not SupervisorState.FAILED:
            self._state = SupervisorState.CLOSED
        for child in self._children.values():
            self._notify(child)
        self._host_release.set()
        if self._abandoned == 0:
            await self._host_done.wait()

    # ------------------------------------------------------------ plumbing

    async def _open_host(self) -> None:
        ready = trio.Event()

        async def host() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    self._host_nursery = nursery
                    ready.set()
                    await self._host_release.wait()
            finally:
                self._host_done.set()

        trio.lowlevel.spawn_system_task(
            host, name=f"supervisor {self.name!r} host", context=contextvars.copy_context()
        )
        with trio.CancelScope(shield=True):
            await ready.wait()

    @property
    def _host(self) -> trio.Nursery:
        assert self._host_nursery is not None, "open supervisors with open_supervisor()"
        return self._host_nursery

    def _operation(self) -> _Operation:
        return _Operation(self)

    def _cancel_operations(self) -> None:
        for scope in self._ops:
            scope.cancel()

    def _settle_exit(self, child: _Child, reason: ExitReason) -> None:
        child.last_exit = reason
        child.run = None
        child.ready = False
        child.state = ChildState.STOPPED
        self._notify(child)

    def _remove(self, child: _Child) -> None:
        if self._children.get(child.spec.id) is child:
            del self._children[child.spec.id]
        child.state, child.ready = ChildState.STOPPED, False  # what its views read now
        self._notify(child)

    @staticmethod
    def _notify(child: _Child) -> None:
        if child.changed is not None:
            child.changed.set()
            child.changed = None

    @staticmethod
    def _cancel_reason(message: str) -> ExitReason:
        return ExitReason(ExitKind.CANCELLED, trio.current_time(), None, message)

    def _get(self, child_id: str) -> _Child:
        try:
            return self._children[child_id]
        except KeyError:
            raise ChildNotFound(child_id, self.name) from None

    def _where(self, child: _Child) -> str:
        """The child in a log line: its supervisor's name, a slash, its id (the actor
        runtime names supervisors by path, so this is the actor's path)."""
        return f"{self.name.rstrip('/')}/{child.spec.id}"

    def _fields(self, child: _Child, **fields: Any) -> dict[str, Any]:
        return {"supervisor": self.name, "child": child.spec.id, **fields}

    def _refuse_self_stop(self, child: _Child) -> None:
        if child.run is not None and child.run.task is trio.lowlevel.current_task():
            raise RuntimeError(
                f"child {child.spec.id!r} cannot stop itself through its supervisor;"
                " return or raise from its start function instead"
            )

    def _check_running(self) -> None:
        if self._state is not SupervisorState.RUNNING:
            raise self._closed_error()

    def _closed_error(self) -> SupervisorClosed:
        return SupervisorClosed(
            f"supervisor {self.name!r} is {self._state.value};"
            " open a new one with open_supervisor()"
        )

    def _child_statistics(self, child: _Child) -> ChildStatistics:
        run = child.run
        return ChildStatistics(
            id=child.spec.id,
            state=child.state,
            restart=child.spec.restart,
            restarts=child.restarts,
            last_exit=child.last_exit,
            backoff=child.backoff,
            ready=child.ready,
            probes=tuple(tracker.snapshot() for tracker in child.trackers.values()),
            started_at=run.started_at if run is not None else None,
            runs=child.runs,
            last_restart_at=child.last_restart_at,
        )


@contextlib.asynccontextmanager
async def open_supervisor(
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    max_restarts: int = 3,
    period: float = 5.0,
    name: str | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Supervisor]:
    """Open a supervisor; it behaves like a nursery for its children.

    When the body ends, every child is stopped in reverse start order, each within its
    ``shutdown`` deadline. When the supervisor fails (more than ``max_restarts``
    restarts within ``period`` seconds), it stops its children, the body is cancelled
    and :class:`RestartIntensityExceeded` propagates out of the ``async with``.

    Args:
        strategy: which children a restart involves.
        max_restarts: restarts tolerated within ``period`` (0: the first crash fails).
        period: the sliding window, in seconds, over which restarts are counted.
        name: shown in errors and statistics.
        rng: the random source for backoff jitter; pass ``random.Random(seed)`` to make
            delays reproducible.

    Raises:
        TypeError, ValueError: a bad argument (the message names it).
        RestartIntensityExceeded: the supervisor gave up.
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a Strategy, got {strategy!r}")
    _validate.count("open_supervisor", "max_restarts", max_restarts, minimum=0)
    _validate.positive("open_supervisor", "period", period)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"open_supervisor.name must be a str, got {type(name).__name__}")
    supervisor = Supervisor(
        name=name if name is not None else "supervisor",
        strategy=strategy,
        max_restarts=max_restarts,
        period=period,
        rng=rng if rng is not None else random.Random(),
    )
    await supervisor._open_host()
    try:
        with supervisor._body_scope:
            yield supervisor
    except BaseException as body_error:
        with trio.CancelScope(shield=True):
            await supervisor._close()
        failure = supervisor._failure
        if failure is not None and not isinstance(body_error, trio.Cancelled):
            raise BaseExceptionGroup(
                f"supervisor {supervisor.name!r} failed while its body raised",
                [failure, body_error],
            ) from None
        raise
    with trio.CancelScope(shield=True):
        await supervisor._close()
    if supervisor._failure is not None:
        raise supervisor._failure
