"""The fault injector of a runtime (``runtime.faults``): inject, list, get, clear, and
the runtime's hooks (``_core._hooks.RuntimeHooks``) through which it reaches actors as
they are spawned and started. The module docstring of :mod:`cws_actors.faults` says
what each kind of fault does."""

from __future__ import annotations

import builtins
import collections
import itertools
import math
import random
import re
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

from ._exceptions import FaultNotFound, FaultSpecError, FaultTargetError
from ._firing import CellFaults, _Fault
from ._records import FaultFiring, FaultRecord, FaultState
from ._spec import FaultKind, FaultSpec
from ._targets import compile_target

if TYPE_CHECKING:
    from .._core._actor import Actor
    from .._core._cell import ActorCell

_MESSAGE_KINDS = frozenset(
    {FaultKind.CRASH, FaultKind.HANG, FaultKind.LATENCY, FaultKind.ERROR_RATE, FaultKind.DROP}
)
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@runtime_checkable
class FaultableProcess(Protocol):
    """What an actor that runs a process (a subprocess plugin's) offers the injector."""

    @property
    def process_fault_kinds(self) -> frozenset[FaultKind]: ...

    def fault_signal(self, signum: int) -> bool:
        """Signal the process; False when none runs."""
        ...

    async def fault_memory_hog(self) -> None: ...


@attrs.define(eq=False)
class FaultInjector:
    """The faults injected into one runtime (``runtime.faults``).

    Args:
        seed: seeds every fault's random source (with the fault's id); None picks one,
            readable afterwards as ``seed``.
        history: finished faults (expired, spent, cleared) kept for ``list``.
        firing_log: firings kept for ``firings()``.
    """

    seed: int | None = attrs.field(default=None, kw_only=True)
    history: int = attrs.field(default=1000, kw_only=True)
    firing_log: int = attrs.field(default=10_000, kw_only=True)
    _faults: dict[str, _Fault] = attrs.field(factory=dict, init=False)
    _finished: collections.deque[_Fault] = attrs.field(init=False)
    _firings: collections.deque[FaultFiring] = attrs.field(init=False)
    _cells: Mapping[str, ActorCell] = attrs.field(factory=dict, init=False)
    """The runtime's actors (its router's cells: no copy, no cost per actor)."""
    _starting: dict[str, ActorCell] = attrs.field(factory=dict, init=False)
    """Actors being spawned, not among ``_cells`` yet."""
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        if self.seed is None:
            self.seed = random.SystemRandom().getrandbits(32)
        elif isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int or None, got {self.seed!r}")
        self._finished = collections.deque(maxlen=self.history)
        self._firings = collections.deque(maxlen=self.firing_log)

    # ------------------------------------------------------------------ public

    def inject(
        self,
        target: str,
        spec: FaultSpec | str | Mapping[str, Any],
        *,
        id: str | None = None,
        seed: int | None = None,
        stream: str | None = None,
    ) -> FaultRecord:
        """Inject a fault into the actors ``target`` names (a path or a glob), now and
        as they are spawned, until it expires, is spent or is cleared.

        Args:
            target: ``/plugins/aws``, ``/plugins/*``...
            spec: a FaultSpec, its compact text (``"crash:0.05 for 1m"``) or its dict.
            id: the fault's id (letters, digits, ``_``, ``-``, ``.``); by default
                ``f1``, ``f2``...
            seed: seeds this fault's random source (with its id) instead of the
                injector's seed: a chaos run passes its own.
            stream: names the random source instead of the id, so that faults with
                different ids can make the same decisions (a chaos run's n-th fault is
                ``chaos-n`` whatever its id).

        Raises:
            FaultSpecError: a bad spec or id, or an id already active.
            FaultTargetError: a bad target, or a process fault aimed at an actor that
                has no process of its own (or ``memory_hog`` at one with no memory limit).
        """
        matches = compile_target(target)
        spec = _coerce_spec(spec)
        if spec.kind.process_level:
            self.check_process_target(target, spec.kind)
        if id is None:
            id = next(f"f{n}" for n in self._ids if f"f{n}" not in self._faults)
        elif not isinstance(id, str) or not _ID.fullmatch(id):
            raise FaultSpecError(
                f"a fault id is letters, digits, '_', '-' or '.', not starting with '-' or"
                f" '.', got {id!r}"
            )
        elif id in self._faults:
            raise FaultSpecError(f"fault {id!r} is already active; clear it or pick another id")
        now = trio.current_time()
        fault = _Fault(
            injector=self,
            id=id,
            target=target,
            spec=spec,
            matches=matches,
            seed_key=f"{self.seed if seed is None else seed}:{stream or id}",
            created_at=now,
            created_time=time.time(),
            expires_at=now + spec.duration if spec.duration is not None else None,
        )
        self._faults[id] = fault
        self._refresh()
        return fault.record()

    def list(self, *, include_finished: bool = False) -> builtins.list[FaultRecord]:
        """The active faults in the order injected (and, with ``include_finished``, the
        latest ``history`` finished ones before them)."""
        self._expire()
        finished = [fault.record() for fault in self._finished] if include_finished else []
        return finished + [fault.record() for fault in self._faults.values()]

    def get(self, fault_id: str) -> FaultRecord:
        """The fault with that id, active or recently finished.

        Raises:
            FaultNotFound: no such fault.
        """
        self._expire()
        fault = self._faults.get(fault_id)
        if fault is None:
            fault = next((f for f in reversed(self._finished) if f.id == fault_id), None)
        if fault is None:
            raise FaultNotFound(f"no fault {fault_id!r}; list() shows the faults there are")
        return fault.record()

    def clear(
        self, fault_id: str | None = None, *, target: str | None = None
    ) -> builtins.list[FaultRecord]:
        """Clear one fault by id, the faults injected with exactly ``target``, or (with
        neither) all of them. Return the cleared faults.

        Raises:
            FaultNotFound: ``fault_id`` names no active fault.
            ValueError: both an id and a target.
        """
        if fault_id is not None and target is not None:
            raise ValueError("clear() takes a fault id or a target, not both")
        self._expire()
        if fault_id is not None:
            fault = self._faults.get(fault_id)
            if fault is None:
                gone = next((f for f in reversed(self._finished) if f.id == fault_id), None)
                why = f" (it is {gone.state.value})" if gone is not None else ""
                raise FaultNotFound(f"no active fault {fault_id!r}{why}")
            chosen = [fault]
        else:
            chosen = [f for f in self._faults.values() if target is None or f.target == target]
        for fault in chosen:
            self._finish(fault, FaultState.CLEARED, refresh=False)
        self._refresh()
        return [fault.record() for fault in chosen]

    def firings(self) -> tuple[FaultFiring, ...]:
        """The latest firings, oldest first."""
        return tuple(self._firings)

    def check_process_target(self, target: str, kind: FaultKind) -> None:
        """Check that a process fault (``kill``, ``pause``, ``memory_hog``) can reach
        ``target`` as it runs now; a glob, or an actor not spawned yet, always can (the
        fault applies to the eligible actors it matches).

        Raises:
            FaultTargetError: the actor there runs in the daemon's process, or (for
                ``memory_hog``) has no memory limit.
        """
        cell = self._cells.get(target) or self._starting.get(target)
        actor = cell.actor if cell is not None else None
        if actor is None:
            return  # a glob, or an actor not spawned yet: it applies to the eligible ones
        kinds = actor.process_fault_kinds if isinstance(actor, FaultableProcess) else frozenset()
        if kind in kinds:
            return
        if kind is FaultKind.MEMORY_HOG and FaultKind.KILL in kinds:
            raise FaultTargetError(
                f"memory_hog needs a memory limit on {target} (limits.memory_mb in its"
                " manifest or the operator's overrides)"
            )
        raise FaultTargetError(
            f"{kind.value} needs a subprocess plugin; {target} runs in the daemon's process"
        )

    def reached(self, target: str) -> builtins.list[str]:
        """The paths of the actors running now that ``target`` (a path or a glob)
        matches, sorted; a fault on it also reaches those spawned later.

        Raises:
            FaultTargetError: not a path or a glob.
        """
        matches = compile_target(target)
        return sorted(path for path in self._cells if matches(path))

    # ------------------------------------------------------------------ runtime hooks

    def bind(self, cells: Mapping[str, ActorCell]) -> None:
        """Take the runtime's actors (its router's cells, by path) as those to reach."""
        self._cells = cells

    def attach(self, cell: ActorCell) -> None:
        """Put an actor being spawned under the faults whose targets match it, before its
        start (so that ``slow_start`` applies to it); ``settle`` it once started."""
        self._starting[cell.path] = cell
        cell.hooks = self._cell_faults(cell.path)

    def started(self, cell: ActorCell, actor: Actor) -> None:
        """A run of ``cell`` started: an actor that runs a process (a subprocess
        plugin) takes process faults, fired by a task in its nursery for this run."""
        nursery = actor._nursery
        if (
            nursery is not None
            and isinstance(actor, FaultableProcess)
            and actor.process_fault_kinds
        ):
            nursery.start_soon(self.drive_process, cell.path, actor)

    def settle(self, cell: ActorCell) -> None:
        """The spawn of ``cell`` ended: it is among the bound cells now, or it failed."""
        if self._starting.get(cell.path) is cell:
            del self._starting[cell.path]

    async def drive_process(self, path: str, process: FaultableProcess) -> None:
        """Fire the process faults on ``path`` at its process, for as long as this run of
        it lasts (a task in the actor's nursery, started by its cell)."""
        ticks: dict[str, int] = {}
        while True:
            now = trio.current_time()
            wake, due = math.inf, None
            kinds = process.process_fault_kinds
            for fault in list(self._faults.values()):
                if fault.spec.kind not in kinds or not fault.matches(path) or not fault.live(now):
                    continue
                if fault.expires_at is not None:
                    wake = min(wake, fault.expires_at)
                every = fault.spec.every
                if every is None:
                    due = fault
                    break
                tick = ticks.setdefault(fault.id, math.floor((now - fault.created_at) / every) + 1)
                at = fault.created_at + tick * every
                if at <= now:
                    ticks[fault.id] = tick + 1
                    due = fault
                    break
                wake = min(wake, at)
            if due is None:
                with trio.move_on_at(wake):
                    await self._changed.wait()
                continue
            if not await self._fire_at_process(due, path, process):
                return  # the process is gone or going: this run is ending

    # ------------------------------------------------------------------ internals

    async def _fire_at_process(self, fault: _Fault, path: str, process: FaultableProcess) -> bool:
        kind = fault.spec.kind
        if kind is FaultKind.MEMORY_HOG:
            fault.seen += 1
            fault.fire(path, "memory_hog request")
            await process.fault_memory_hog()  # the process dies of it; its watcher reports
            return True
        signum = signal.SIGKILL if kind is FaultKind.KILL else signal.SIGSTOP
        if not process.fault_signal(signum):
            return False
        fault.seen += 1
        fault.fire(path, signal.Signals(signum).name)
        if kind is FaultKind.PAUSE:
            assert fault.spec.pause_for is not None
            try:
                await trio.sleep(fault.spec.pause_for)
            finally:
                process.fault_signal(signal.SIGCONT)  # never leave a stopped process
        return True

    def _cell_faults(self, path: str) -> CellFaults | None:
        message, start = [], []
        for fault in self._faults.values():
            if fault.matches(path):
                if fault.spec.kind in _MESSAGE_KINDS:
                    message.append(fault)
                elif fault.spec.kind is FaultKind.SLOW_START:
                    start.append(fault)
        if not message and not start:
            return None
        return CellFaults(tuple(message), tuple(start))

    def _refresh(self) -> None:
        for cell in itertools.chain(self._cells.values(), self._starting.values()):
            cell.hooks = self._cell_faults(cell.path)
        changed, self._changed = self._changed, trio.Event()
        changed.set()  # the process drivers look again

    def _expire(self) -> None:
        now = trio.current_time()
        for fault in list(self._faults.values()):
            fault.live(now)

    def _finish(self, fault: _Fault, state: FaultState, *, refresh: bool = True) -> None:
        if self._faults.pop(fault.id, None) is None:
            return
        fault.state = state
        self._finished.append(fault)
        if refresh:
            self._refresh()


def _coerce_spec(spec: FaultSpec | str | Mapping[str, Any]) -> FaultSpec:
    if isinstance(spec, FaultSpec):
        return spec
    if isinstance(spec, str):
        return FaultSpec.parse(spec)
    if isinstance(spec, Mapping):
        return FaultSpec.from_dict(spec)
    raise TypeError(
        f"a fault spec is a FaultSpec, its compact text or its dict, got {type(spec).__name__}"
    )
