"""Fault injection: crash, hang, slow down, drop, kill and starve actors and plugins on
purpose, to test that supervision, probes and callers cope.

Public names (all exported by :mod:`cws_actors`):

- :class:`FaultInjector`: a runtime's faults, as ``runtime.faults``. ``inject(target,
  spec)`` returns a :class:`FaultRecord`; ``list()``, ``get(id)``, ``clear(id)``,
  ``clear(target=...)``, ``clear()`` and ``firings()`` (a :class:`FaultFiring` log).
- :class:`FaultSpec`, :class:`FaultKind`, :func:`parse_fault_list`: what a fault does
  (in ``_faultspec``), from and to a dict or the compact string syntax.
- :class:`FaultRecord` (with its :class:`FaultState`): an injected fault, its id, target,
  spec, times and firing statistics, frozen at the moment it was asked for.
- :class:`InjectedFault`: the exception a ``crash`` or ``error_rate`` fault raises.
- :class:`FaultSpecError`, :class:`FaultTargetError` (ValueErrors) for bad specs and
  targets; :class:`FaultNotFound` (a LookupError) for an unknown fault id.

A target is an actor path (``/plugins/aws``) or a glob over paths: ``*`` and ``?`` match
within one path segment, ``**`` any number of segments (``/plugins/*``, ``/**``). It may
name actors that do not exist yet: they get the fault when they are spawned.

What each kind does (message faults apply to tells, asks and bus events, never to the
probes' control messages; the faults on one actor apply in the order injected, and the
first that consumes the message ends the list):

- ``crash``: the handler raises InjectedFault before the actor sees the message; the
  asker gets HandlerFailed and the supervisor restarts the actor, as for any crash.
- ``hang``: the handler blocks until cancelled: a liveness probe fails and restarts it.
- ``latency``: a delay before the message is handled (fixed, uniform or exponential).
- ``error_rate``: the asker gets HandlerFailed (InjectedFault chained) without the actor
  seeing the message, and the actor is *not* restarted: it models a handler that
  reports an error (a 5xx from a cloud) rather than one that breaks. Use ``crash`` for
  crashes.
- ``drop``: the message vanishes and becomes a dead letter with reason ``fault``. An ask
  gets no reply, so it fails with AskTimeout at its deadline, as a lost message would
  (at once, if it has no deadline, so that nothing waits forever).
- ``slow_start``: a delay before each start of the actor (``on_start``).
- ``kill``, ``pause``, ``memory_hog``: only for subprocess plugins. SIGKILL (once, or
  every interval on a schedule counted from injection), SIGSTOP then SIGCONT, or a
  protocol request on which the plugin's process allocates until its memory limit ends
  it. The plugin's watcher sees the death and the supervisor restarts it.

Determinism: ``FaultInjector(seed=42)`` gives each fault, for each actor it reaches, its
own ``random.Random``, seeded from the injector's seed, the fault's id and the actor's
path, so that the same seed and the same injections (ids are ``f1``, ``f2``... unless
given) make the same firings: each actor's n-th message meets the same decision however
the scheduler interleaves the actors. Without a
seed the injector picks one (``injector.seed``), so that a run can be replayed.

Cost: with no fault on an actor, its cell pays one ``is not None`` check per message.
"""

from __future__ import annotations

import builtins
import collections
import enum
import itertools
import math
import random
import re
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import trio

from .._core._bus import Event
from .._core._exceptions import AskTimeout, HandlerFailed
from ._spec import FaultKind, FaultSpec, FaultSpecError, FaultTargetError

if TYPE_CHECKING:
    from .._core._cell import ActorCell
    from .._core._envelope import Envelope

_MESSAGE_KINDS = frozenset(
    {FaultKind.CRASH, FaultKind.HANG, FaultKind.LATENCY, FaultKind.ERROR_RATE, FaultKind.DROP}
)
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class InjectedFault(Exception):
    """Raised in an actor's handler by a ``crash`` fault (the actor crashes) or an
    ``error_rate`` fault (only the asker sees it, chained in HandlerFailed)."""

    def __init__(self, fault_id: str, kind: FaultKind, path: str) -> None:
        super().__init__(f"fault {fault_id!r} ({kind.value}) injected into {path}")
        self.fault_id = fault_id
        self.kind = kind
        self.path = path


class FaultNotFound(LookupError):
    """Raised by ``get`` and ``clear`` for an id that names no active fault."""


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


@runtime_checkable
class FaultableProcess(Protocol):
    """What an actor that runs a process (a subprocess plugin's) offers the injector."""

    @property
    def process_fault_kinds(self) -> frozenset[FaultKind]: ...

    def fault_signal(self, signum: int) -> bool:
        """Signal the process; False when none runs."""
        ...

    async def fault_memory_hog(self) -> None: ...


# ---------------------------------------------------------------------- internals


def compile_target(target: str) -> Callable[[str], bool]:
    """A predicate on actor paths for a fault target (a path or a glob).

    Raises:
        FaultTargetError: not a string starting with '/'.
    """
    if not isinstance(target, str) or not target.startswith("/"):
        raise FaultTargetError(
            "a fault target is an actor path or a glob starting with '/', such as"
            f" '/plugins/aws' or '/plugins/*', got {target!r}"
        )
    if not any(char in target for char in "*?["):
        return target.__eq__
    pattern = ""
    for segment in target[1:].split("/"):
        pattern += "(?:/[^/]+)*" if segment == "**" else "/" + _segment_regex(segment)
    compiled = re.compile(pattern)
    return lambda path: compiled.fullmatch(path) is not None


def _segment_regex(segment: str) -> str:
    out, index = "", 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[" and "]" in segment[index + 1 :]:
            end = segment.index("]", index + 1)
            body = segment[index:end]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\")
            out += "]"
            index = end + 1
        else:
            out += re.escape(char)
    return out


@attrs.define(eq=False)
class _Fault:
    injector: FaultInjector
    id: str
    target: str
    spec: FaultSpec
    matches: Callable[[str], bool]
    seed_key: str
    """With an actor's path, names that actor's random source for this fault."""
    created_at: float
    created_time: float
    expires_at: float | None
    state: FaultState = FaultState.ACTIVE
    fired: int = 0
    seen: int = 0
    last_fired_at: float | None = None
    since_fired: dict[str, int] = attrs.field(factory=dict)
    """Per actor path: messages since the last firing (for ``crash`` after N)."""
    rngs: dict[str, random.Random] = attrs.field(factory=dict)
    """Per actor path: its own random source, so that each actor's decisions depend on
    its own sequence of messages, not on how the scheduler interleaves the actors."""

    def rng(self, path: str) -> random.Random:
        rng = self.rngs.get(path)
        if rng is None:
            rng = self.rngs[path] = random.Random(f"{self.seed_key}:{path}")
        return rng

    def live(self, now: float) -> bool:
        if self.state is not FaultState.ACTIVE:
            return False
        if self.expires_at is not None and now >= self.expires_at:
            self.injector._finish(self, FaultState.EXPIRED)
            return False
        return True

    def triggers(self, path: str) -> bool:
        """Whether the message (or start, or tick) just seen fires this fault."""
        spec = self.spec
        if spec.probability is not None:
            return self.rng(path).random() < spec.probability
        if spec.after is not None:
            passed = self.since_fired.get(path, 0) + 1
            if passed > spec.after:
                self.since_fired[path] = 0
                return True
            self.since_fired[path] = passed
            return False
        return True

    def draw_delay(self, path: str) -> float:
        spec = self.spec
        assert spec.delay is not None
        if spec.distribution == "uniform":
            assert spec.delay_max is not None
            return self.rng(path).uniform(spec.delay, spec.delay_max)
        if spec.distribution == "exponential":
            return self.rng(path).expovariate(1.0 / spec.delay)
        return spec.delay

    def fire(self, path: str, detail: str = "") -> None:
        now = trio.current_time()
        self.fired += 1
        self.last_fired_at = now
        self.injector._firings.append(
            FaultFiring(self.id, self.spec.kind, path, self.fired, self.seen, now, detail)
        )
        if self.spec.count is not None and self.fired >= self.spec.count:
            self.injector._finish(self, FaultState.SPENT)

    def record(self) -> FaultRecord:
        return FaultRecord(
            id=self.id,
            target=self.target,
            spec=self.spec,
            state=self.state,
            created_at=self.created_at,
            created_time=self.created_time,
            expires_at=self.expires_at,
            fired=self.fired,
            seen=self.seen,
            last_fired_at=self.last_fired_at,
        )


@attrs.frozen
class CellFaults:
    """The faults on one actor, as its cell holds them (None there when there are none)."""

    message: tuple[_Fault, ...]
    start: tuple[_Fault, ...]

    async def before_message(self, cell: ActorCell, envelope: Envelope) -> bool:
        """Apply the message faults; True when the message is consumed (dropped, or
        failed by ``error_rate``) and the actor must not see it.

        Raises:
            InjectedFault: a ``crash`` fault fired.
        """
        now = trio.current_time()
        for fault in self.message:
            if not fault.live(now):
                continue
            fault.seen += 1
            kind = fault.spec.kind
            if kind is FaultKind.LATENCY:
                delay = fault.draw_delay(cell.path)
                fault.fire(cell.path, f"{delay!r}s")
                await trio.sleep(delay)
                now = trio.current_time()
                continue
            if not fault.triggers(cell.path):
                continue
            fault.fire(cell.path)
            if kind is FaultKind.CRASH:
                raise InjectedFault(fault.id, kind, cell.path)
            if kind is FaultKind.HANG:
                await trio.sleep_forever()
            if kind is FaultKind.ERROR_RATE:
                _fail_reply(cell, envelope, InjectedFault(fault.id, kind, cell.path))
            else:
                _drop(cell, envelope, fault)
            return True
        return False

    async def before_start(self, cell: ActorCell) -> None:
        """Apply the ``slow_start`` faults."""
        for fault in self.start:
            if fault.live(trio.current_time()):
                fault.seen += 1
                assert fault.spec.delay is not None
                fault.fire(cell.path, f"{fault.spec.delay!r}s")
                await trio.sleep(fault.spec.delay)


def _fail_reply(cell: ActorCell, envelope: Envelope, error: InjectedFault) -> None:
    if envelope.reply is not None:
        failure = HandlerFailed(cell.path, error)
        failure.__cause__ = error
        if not envelope.reply.set_error(failure):  # a latency fault outlasted the ask
            cell.router.answered_late(envelope)


def _drop(cell: ActorCell, envelope: Envelope, fault: _Fault) -> None:
    payload = envelope.payload
    if isinstance(payload, Event) and payload.durable:
        cell.queued_durable.discard(payload.id)  # unacknowledged: redelivered on restart
    cell.router.dead_letter(envelope, "fault", f"dropped by fault {fault.id!r} ({fault.spec})")
    if envelope.reply is not None and envelope.deadline == math.inf:
        envelope.reply.set_error(AskTimeout(cell.path, math.inf))


# ---------------------------------------------------------------------- the injector


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
            self._check_process_target(target, spec.kind)
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

    # ------------------------------------------------------------------ runtime hooks

    def bind(self, cells: Mapping[str, ActorCell]) -> None:
        """Take the runtime's actors (its router's cells, by path) as those to reach."""
        self._cells = cells

    def attach(self, cell: ActorCell) -> None:
        """Put an actor being spawned under the faults whose targets match it, before its
        start (so that ``slow_start`` applies to it); ``settle`` it once started."""
        self._starting[cell.path] = cell
        cell.faults = self._cell_faults(cell.path)

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

    def _check_process_target(self, target: str, kind: FaultKind) -> None:
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
            cell.faults = self._cell_faults(cell.path)
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
