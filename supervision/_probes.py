"""Health probes with Kubernetes semantics: startup, liveness and readiness.

A probe's ``check`` is called with no argument, sync or async; it fails by returning
``False``, by raising, or by running past ``timeout``. Anything else is a success. The
startup probe, when there is one, gates the two others; liveness failing
``failure_threshold`` times in a row restarts the child; readiness decides the child's
ready flag, which ``success_threshold`` successes in a row set again.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from . import _validate


class ProbeKind(enum.Enum):
    """What a probe's verdict drives."""

    STARTUP = "startup"
    """Gates liveness and readiness until it passes; failing restarts the child."""
    LIVENESS = "liveness"
    """Failing ``failure_threshold`` times in a row restarts the child."""
    READINESS = "readiness"
    """Failing clears the ready flag (no restart); passing sets it again."""


def _probe_fields(instance: Probe, attribute: attrs.Attribute[Any], value: Any) -> None:
    name = attribute.name
    if name in ("period", "timeout"):
        _validate.positive("Probe", name, value)
    elif name == "initial_delay":
        _validate.non_negative("Probe", name, value)
    else:
        _validate.count("Probe", name, value, minimum=1)


def _check_callable(instance: Probe, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"Probe.check must be callable (sync or async), got {value!r}")


@attrs.frozen
class Probe:
    """One health probe of a child.

    Args:
        kind: startup, liveness or readiness.
        check: called with no argument; ``False``, an exception or a timeout fail it.
        initial_delay: seconds between the probe becoming active (the child started, or
            its startup probe passed) and its first check.
        period: seconds between the starts of two checks.
        timeout: seconds a check may take before it counts as failed.
        success_threshold: successes in a row that make a failing probe pass.
        failure_threshold: failures in a row that make a passing probe fail.
    """

    kind: ProbeKind = attrs.field(validator=attrs.validators.instance_of(ProbeKind))
    check: Callable[[], bool | Awaitable[bool | None] | None] = attrs.field(
        validator=_check_callable
    )
    initial_delay: float = attrs.field(default=0.0, kw_only=True, validator=_probe_fields)
    period: float = attrs.field(default=10.0, kw_only=True, validator=_probe_fields)
    timeout: float = attrs.field(default=1.0, kw_only=True, validator=_probe_fields)
    success_threshold: int = attrs.field(default=1, kw_only=True, validator=_probe_fields)
    failure_threshold: int = attrs.field(default=3, kw_only=True, validator=_probe_fields)


@attrs.frozen
class ProbeStatus:
    """A snapshot of one probe of the child's current (or last) run.

    ``passing`` is ``None`` until the probe has reached a verdict.
    """

    kind: ProbeKind
    passing: bool | None
    consecutive_successes: int
    consecutive_failures: int
    checks: int
    last_error: str | None
    last_checked: float | None


@attrs.define(eq=False)
class ProbeTracker:
    """The running tally of one probe; the supervisor snapshots it in statistics()."""

    probe: Probe
    passing: bool | None = None
    successes: int = 0
    failures: int = 0
    checks: int = 0
    last_error: str | None = None
    last_checked: float | None = None

    def snapshot(self) -> ProbeStatus:
        return ProbeStatus(
            kind=self.probe.kind,
            passing=self.passing,
            consecutive_successes=self.successes,
            consecutive_failures=self.failures,
            checks=self.checks,
            last_error=self.last_error,
            last_checked=self.last_checked,
        )

    async def check_once(self) -> bool | None:
        """Run one check; return the new verdict if it changed, else None."""
        error = await _run_check(self.probe)
        self.checks += 1
        self.last_checked = trio.current_time()
        self.last_error = error
        if error is None:
            self.successes += 1
            self.failures = 0
            if self.passing is not True and self.successes >= self.probe.success_threshold:
                self.passing = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.passing is not False and self.failures >= self.probe.failure_threshold:
                self.passing = False
                return False
        return None


async def _run_check(probe: Probe) -> str | None:
    """Return None when the check passes, else why it failed."""
    with trio.move_on_after(probe.timeout):
        try:
            result = probe.check()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # noqa: BLE001 - a raising check is a failing check
            return f"{type(exc).__name__}: {exc}"
        if result is False:
            return "check returned False"
        return None
    return f"check timed out after {probe.timeout:g}s"


@attrs.define(eq=False)
class ProbeCallbacks:
    """What a probe run reports to the supervisor."""

    set_ready: Callable[[bool], None]
    failed: Callable[[ProbeKind, str], Awaitable[None]]


async def run_probes(trackers: Mapping[ProbeKind, ProbeTracker], report: ProbeCallbacks) -> None:
    """Drive a child's probes for one run of it, until cancelled or until a startup or
    liveness probe fails (then ``report.failed`` is awaited)."""
    startup = trackers.get(ProbeKind.STARTUP)
    if startup is not None and not await _until_verdict(startup):
        await report.failed(ProbeKind.STARTUP, _failure_message(startup))
        return
    readiness = trackers.get(ProbeKind.READINESS)
    if readiness is None:
        report.set_ready(True)
    async with trio.open_nursery() as nursery:
        if readiness is not None:
            nursery.start_soon(_readiness_loop, readiness, report)
        liveness = trackers.get(ProbeKind.LIVENESS)
        if liveness is not None:
            await _liveness_loop(liveness)
            nursery.cancel_scope.cancel()
            await report.failed(ProbeKind.LIVENESS, _failure_message(liveness))


def _failure_message(tracker: ProbeTracker) -> str:
    return (
        f"{tracker.probe.kind.value} probe failed {tracker.failures} times in a row"
        f" (last: {tracker.last_error})"
    )


async def _until_verdict(tracker: ProbeTracker) -> bool:
    """Check periodically until the probe passes (True) or fails (False)."""
    probe = tracker.probe
    await trio.sleep(probe.initial_delay)
    while True:
        began = trio.current_time()
        verdict = await tracker.check_once()
        if verdict is not None:
            return verdict
        await trio.sleep_until(began + probe.period)


async def _liveness_loop(tracker: ProbeTracker) -> None:
    """Return once liveness has failed ``failure_threshold`` times in a row."""
    probe = tracker.probe
    tracker.passing = True  # a live child is presumed alive until proven otherwise
    await trio.sleep(probe.initial_delay)
    while True:
        began = trio.current_time()
        if await tracker.check_once() is False:
            return
        await trio.sleep_until(began + probe.period)


async def _readiness_loop(tracker: ProbeTracker, report: ProbeCallbacks) -> None:
    probe = tracker.probe
    await trio.sleep(probe.initial_delay)
    while True:
        began = trio.current_time()
        verdict = await tracker.check_once()
        if verdict is not None:
            report.set_ready(verdict)
        await trio.sleep_until(began + probe.period)
