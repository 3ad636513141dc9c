"""What a supervisor is told: strategies, restart types, backoff and child specs."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from . import _validate
from ._probes import Probe


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them must be restarted (OTP)."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped in reverse order, then all start in order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and every child started after it."""


class Restart(enum.Enum):
    """When a child is restarted after it exits (OTP restart types)."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after an abnormal exit: an exception, a liveness failure, an escalation."""
    TEMPORARY = "temporary"
    """Never, not even in a group restart; it is removed when it exits."""


class OnExhausted(enum.Enum):
    """What happens when a child's restarts exceed the supervisor's budget."""

    ESCALATE = "escalate"
    """The supervisor stops all children and fails with RestartIntensityExceeded (OTP)."""
    QUARANTINE = "quarantine"
    """Only this child stops, in the ``quarantined`` state, until clear_quarantine().

    Its budget is counted for it alone (``max_restarts`` within ``period``) and its
    restarts do not count toward the supervisor's intensity, so a crash-looping child
    cannot take its siblings down."""


class Jitter(enum.Enum):
    """How a backoff delay is drawn below its cap."""

    NONE = "none"
    """Exactly the cap."""
    FULL = "full"
    """Uniform in [0, cap] (AWS architecture blog's "full jitter")."""
    EQUAL = "equal"
    """cap/2 plus uniform in [0, cap/2]."""


def _backoff_fields(instance: Backoff, attribute: attrs.Attribute[Any], value: Any) -> None:
    if attribute.name == "multiplier":
        _validate.number("Backoff", "multiplier", value)
        if value < 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, got {value!r}")
    elif attribute.name == "reset_after":
        _validate.positive("Backoff", "reset_after", value)
    else:
        _validate.non_negative("Backoff", attribute.name, value)


@attrs.frozen
class Backoff:
    """Delay between a child's exit and its restart: exponential, capped, jittered.

    The delay before restart ``n`` (0 for the first restart after a stable run) is drawn
    below ``min(maximum, initial * multiplier**n)`` as ``jitter`` says. ``n`` goes back
    to 0 once the child has run for ``reset_after`` seconds without exiting.

    Raises:
        ValueError: a negative delay, ``maximum < initial``, ``multiplier < 1`` or
            ``reset_after <= 0``.
    """

    initial: float = attrs.field(validator=_backoff_fields)
    maximum: float = attrs.field(validator=_backoff_fields)
    multiplier: float = attrs.field(default=2.0, kw_only=True, validator=_backoff_fields)
    jitter: Jitter = attrs.field(
        default=Jitter.FULL, kw_only=True, validator=attrs.validators.instance_of(Jitter)
    )
    reset_after: float = attrs.field(default=60.0, kw_only=True, validator=_backoff_fields)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ValueError(
                f"Backoff.maximum must be >= initial, got maximum={self.maximum!r}"
                f" < initial={self.initial!r}"
            )

    def cap(self, attempt: int) -> float:
        """The largest delay before restart number ``attempt`` (0-based)."""
        if self.initial == 0:
            return 0.0
        # Compare in log space: multiplier**attempt overflows long before it matters.
        if attempt * math.log(self.multiplier) >= math.log(self.maximum / self.initial):
            return self.maximum
        return float(self.initial * self.multiplier**attempt)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Draw the delay before restart number ``attempt`` from ``rng``."""
        cap = self.cap(attempt)
        if self.jitter is Jitter.NONE:
            return cap
        if self.jitter is Jitter.EQUAL:
            return cap / 2 + rng.uniform(0, cap / 2)
        return rng.uniform(0, cap)


def _check_start(instance: ChildSpec, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _validate.is_async_callable(value):
        raise TypeError(
            "ChildSpec.start must be an async function taking task_status"
            f" (like nursery.start), got {value!r}"
        )


def _check_id(instance: ChildSpec, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"ChildSpec.id must be a non-empty str, got {value!r}")


def _check_shutdown(instance: ChildSpec, attribute: attrs.Attribute[Any], value: Any) -> None:
    _validate.positive("ChildSpec", "shutdown", value)


def _check_probes(instance: ChildSpec, attribute: attrs.Attribute[Any], value: Any) -> None:
    kinds = set()
    for probe in value:
        if not isinstance(probe, Probe):
            raise TypeError(f"ChildSpec.probes must hold Probe objects, got {probe!r}")
        if probe.kind in kinds:
            raise ValueError(f"ChildSpec.probes has two {probe.kind.value} probes; one per kind")
        kinds.add(probe.kind)


def _to_tuple(value: Sequence[Probe]) -> tuple[Probe, ...]:
    return tuple(value)


@attrs.frozen
class ChildSpec:
    """How to start and supervise one child.

    Args:
        id: unique among the supervisor's children.
        start: an async function called as ``start(task_status=...)``; it calls
            ``task_status.started(value)`` once ready, exactly like ``nursery.start``.
        restart: when to restart it.
        shutdown: seconds it gets to exit once cancelled (``math.inf`` to wait forever);
            past it the child is abandoned and recorded as ``shutdown_timeout``.
        backoff: delay before each restart; ``None`` restarts at once.
        probes: at most one probe of each kind.
        on_exhausted: what happens when its restarts exceed the budget.
    """

    id: str = attrs.field(validator=_check_id)
    start: Callable[..., Any] = attrs.field(validator=_check_start)
    restart: Restart = attrs.field(
        default=Restart.PERMANENT, kw_only=True, validator=attrs.validators.instance_of(Restart)
    )
    shutdown: float = attrs.field(default=5.0, kw_only=True, validator=_check_shutdown)
    backoff: Backoff | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.instance_of(Backoff)),
    )
    probes: tuple[Probe, ...] = attrs.field(
        default=(), kw_only=True, converter=_to_tuple, validator=_check_probes
    )
    on_exhausted: OnExhausted = attrs.field(
        default=OnExhausted.ESCALATE,
        kw_only=True,
        validator=attrs.validators.instance_of(OnExhausted),
    )
