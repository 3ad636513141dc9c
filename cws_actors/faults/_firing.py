"""How faults fire on one actor: the per-fault state (random sources, counts) and
:class:`CellFaults`, the hooks (``_core._hooks.CellHooks``) an actor's cell calls
before each message and each start while faults target it."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from .._core._bus import Event
from .._core._exceptions import AskTimeout, HandlerFailed
from ._exceptions import InjectedFault
from ._records import FaultFiring, FaultRecord, FaultState
from ._spec import FaultKind, FaultSpec

if TYPE_CHECKING:
    from .._core._cell import ActorCell
    from .._core._envelope import Envelope
    from ._injector import FaultInjector


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
        cell.unmark_durable_queued(payload.id)  # unacknowledged: redelivered on restart
    cell.router.dead_letter(envelope, "fault", f"dropped by fault {fault.id!r} ({fault.spec})")
    if envelope.reply is not None and envelope.deadline == math.inf:
        envelope.reply.set_error(AskTimeout(cell.path, math.inf))
