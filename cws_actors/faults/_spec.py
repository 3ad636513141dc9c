"""Fault specifications: what an injected fault does, as a value that parses from and
renders to plain data (``FaultSpec.from_dict`` / ``as_dict``, for JSON) and a compact
string (``FaultSpec.parse`` / ``str(spec)``, for the command line).

The compact grammar, read by :func:`parse_fault_list`::

    faults     := fault ("," fault)*                 blank text: no faults
    fault      := kind [":" argument] [" for " DURATION] [" times " COUNT]
    crash      := "crash" [":" ("next" | "after " COUNT | P)]    bare crash: next
    hang       := "hang" [":" P]                       bare hang: every message
    latency    := "latency:" (DURATION | DURATION ".." DURATION | "exp " DURATION)
    error_rate := "error_rate:" P
    drop       := "drop:" P
    slow_start := "slow_start:" DURATION
    kill       := "kill" [":" ("once" | "every " DURATION)]       bare kill: once
    pause      := "pause:" DURATION
    memory_hog := "memory_hog"
    DURATION   := NUMBER ("ms" | "s" | "m")           10ms, 1.5s, 2m
    P          := a NUMBER from 0 to 1                a probability, such as 0.05
    COUNT      := a whole number

``for DURATION`` makes the fault expire that long after it is injected; ``times COUNT``
caps how often it fires (either suffix may come first). For example
``crash:0.05,latency:10ms..50ms,kill:every 10s for 2m``.

Every bad spec raises :class:`FaultSpecError` (a ValueError), whose message says what
was wrong and what is expected, whichever way the spec came in.
"""

from __future__ import annotations

import decimal
import difflib
import enum
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .._core._durations import parse_duration as _parse_duration
from ._exceptions import FaultSpecError


class FaultKind(enum.Enum):
    """What a fault does; the value is its name in specs and in the compact syntax."""

    CRASH = "crash"
    """The handler raises InjectedFault: the actor crashes and its supervisor restarts it."""
    HANG = "hang"
    """The handler blocks until cancelled (a liveness probe catches it)."""
    LATENCY = "latency"
    """A delay before each message."""
    ERROR_RATE = "error_rate"
    """A fraction of handlers fail (HandlerFailed to an asker); the actor keeps running."""
    DROP = "drop"
    """A fraction of messages vanish, each recorded as a dead letter (reason ``fault``)."""
    SLOW_START = "slow_start"
    """A delay before the actor's start (its ``on_start``)."""
    KILL = "kill"
    """SIGKILL of a subprocess plugin's process, once or every interval."""
    PAUSE = "pause"
    """SIGSTOP of a subprocess plugin's process, then SIGCONT after a while."""
    MEMORY_HOG = "memory_hog"
    """A subprocess plugin's process allocates until its memory limit stops it."""

    @property
    def process_level(self) -> bool:
        """True for the faults that act on a subprocess plugin's process."""
        return self in _PROCESS_KINDS


_PROCESS_KINDS = frozenset({FaultKind.KILL, FaultKind.PAUSE, FaultKind.MEMORY_HOG})
_KIND_NAMES = ", ".join(kind.value for kind in FaultKind)

LATENCY_DISTRIBUTIONS = ("fixed", "uniform", "exponential")

# The parameters each kind takes, beyond `duration` and `count` which all take.
_PARAMETERS: dict[FaultKind, tuple[str, ...]] = {
    FaultKind.CRASH: ("probability", "after"),
    FaultKind.HANG: ("probability",),
    FaultKind.LATENCY: ("delay", "delay_max", "distribution"),
    FaultKind.ERROR_RATE: ("probability",),
    FaultKind.DROP: ("probability",),
    FaultKind.SLOW_START: ("delay",),
    FaultKind.KILL: ("every",),
    FaultKind.PAUSE: ("pause_for",),
    FaultKind.MEMORY_HOG: (),
}
_REQUIRED: dict[FaultKind, tuple[str, str]] = {
    FaultKind.LATENCY: ("delay", "latency:10ms, latency:10ms..50ms or latency:exp 20ms"),
    FaultKind.ERROR_RATE: ("probability", "error_rate:0.1"),
    FaultKind.DROP: ("probability", "drop:0.1"),
    FaultKind.SLOW_START: ("delay", "slow_start:2s"),
    FaultKind.PAUSE: ("pause_for", "pause:5s"),
}
_DURATION_FIELDS = frozenset({"delay", "delay_max", "every", "pause_for", "duration"})
_ALL_PARAMETERS = ("probability", "after", "delay", "delay_max", "distribution", "every",
                   "pause_for")  # fmt: skip


def _to_kind(value: FaultKind | str) -> FaultKind:
    if isinstance(value, FaultKind):
        return value
    try:
        return FaultKind(value)
    except ValueError:
        pass
    close = difflib.get_close_matches(str(value), [kind.value for kind in FaultKind], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise FaultSpecError(
        f"unknown fault kind {value!r}{hint}; expected one of {_KIND_NAMES}"
    ) from None


@attrs.frozen
class FaultSpec:
    """What a fault does and for how long: a kind and the parameters that kind takes.

    ==========  ==================================================================
    kind        parameters
    ==========  ==================================================================
    crash       ``probability`` (each message), or ``after`` (let N messages
                through, crash on the next), or neither (the next message)
    hang        ``probability``, or none (every message)
    latency     ``delay`` seconds; with ``delay_max``, uniform from delay to
                delay_max; with ``distribution="exponential"``, exponential of
                mean ``delay``. ``distribution`` is filled in: fixed, uniform or
                exponential
    error_rate  ``probability`` (required)
    drop        ``probability`` (required)
    slow_start  ``delay`` seconds (required)
    kill        ``every`` seconds, or none (once)
    pause       ``pause_for`` seconds (required)
    memory_hog  none
    ==========  ==================================================================

    Every kind takes ``duration`` (seconds: then it expires) and ``count`` (the most
    times it fires). The one-shot kinds (crash next or after N, kill once, pause,
    memory_hog) fire once unless ``count`` says more; ``count`` is filled in as 1.

    Raises:
        FaultSpecError: a parameter that does not apply to the kind, or a bad value.
    """

    kind: FaultKind = attrs.field(converter=_to_kind)
    probability: float | None = attrs.field(default=None, kw_only=True)
    after: int | None = attrs.field(default=None, kw_only=True)
    delay: float | None = attrs.field(default=None, kw_only=True)
    delay_max: float | None = attrs.field(default=None, kw_only=True)
    distribution: str | None = attrs.field(default=None, kw_only=True)
    every: float | None = attrs.field(default=None, kw_only=True)
    pause_for: float | None = attrs.field(default=None, kw_only=True)
    duration: float | None = attrs.field(default=None, kw_only=True)
    count: int | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        kind = self.kind
        allowed = _PARAMETERS[kind]
        for name in _ALL_PARAMETERS:
            if getattr(self, name) is not None and name not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
                raise FaultSpecError(
                    f"{name} does not apply to {kind.value} faults; {kind.value} {takes}"
                    " (and duration, count)"
                )
        if kind in _REQUIRED:
            name, example = _REQUIRED[kind]
            if getattr(self, name) is None:
                raise FaultSpecError(f"{kind.value} faults need {name}, as in {example}")
        if self.probability is not None:
            self._set("probability", _number(self.probability, f"{kind.value} probability"))
            if not 0.0 <= self.probability <= 1.0:
                raise FaultSpecError(
                    f"{kind.value} probability must be from 0 to 1, got {self.probability!r}"
                )
        if self.after is not None:
            _whole(self.after, "crash after", minimum=0)
            if self.probability is not None:
                raise FaultSpecError("crash takes probability or after, not both")
        for name in ("delay", "delay_max", "every", "pause_for", "duration"):
            value = getattr(self, name)
            if value is not None:
                label = f"{kind.value} {name}" if name != "duration" else "duration"
                self._set(name, _number(value, label))
                positive = name in ("every", "pause_for", "duration")
                if positive and not getattr(self, name) > 0:
                    raise FaultSpecError(f"{label} must be > 0 seconds, got {value!r}")
                if getattr(self, name) < 0:
                    raise FaultSpecError(f"{label} must be >= 0 seconds, got {value!r}")
        if kind is FaultKind.LATENCY:
            self._check_latency()
        if self.count is not None:
            _whole(self.count, "count", minimum=1)
        elif self.one_shot:
            self._set("count", 1)

    def _check_latency(self) -> None:
        assert self.delay is not None
        distribution = self.distribution
        if distribution is None:
            distribution = "uniform" if self.delay_max is not None else "fixed"
            self._set("distribution", distribution)
        if distribution not in LATENCY_DISTRIBUTIONS:
            raise FaultSpecError(
                f"latency distribution must be fixed, uniform or exponential, got {distribution!r}"
            )
        if distribution == "uniform":
            if self.delay_max is None:
                raise FaultSpecError("a uniform latency needs delay_max (as in 10ms..50ms)")
            if self.delay_max < self.delay:
                raise FaultSpecError(
                    f"latency delay_max must be >= delay, got {self.delay_max!r} < {self.delay!r}"
                )
        elif self.delay_max is not None:
            raise FaultSpecError(
                f"a {distribution} latency takes delay only; delay_max is for uniform ones"
            )
        if distribution == "exponential" and self.delay == 0:
            raise FaultSpecError("an exponential latency needs a mean delay > 0 seconds")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalizing a frozen value as it is made

    @property
    def one_shot(self) -> bool:
        """Does it fire once by default (crash next or after N, kill once, pause,
        memory_hog)?"""
        kind = self.kind
        if kind is FaultKind.CRASH:
            return self.probability is None
        if kind is FaultKind.KILL:
            return self.every is None
        return kind in (FaultKind.PAUSE, FaultKind.MEMORY_HOG)

    # ------------------------------------------------------------------ plain data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultSpec:
        """The spec ``data`` describes: ``{"kind": "latency", "delay": 0.01}``. Durations
        are seconds, or strings with a unit (``"10ms"``).

        Raises:
            FaultSpecError: no kind, an unknown field, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise FaultSpecError(f"a fault spec is an object with a 'kind', got {data!r}")
        if "kind" not in data:
            raise FaultSpecError(f"a fault spec needs a 'kind': one of {_KIND_NAMES}")
        kind = _to_kind(data["kind"])
        fields = {key: value for key, value in data.items() if key != "kind"}
        allowed = (*_PARAMETERS[kind], "duration", "count")
        unknown = sorted(str(key) for key in fields if key not in allowed)
        if unknown:
            raise FaultSpecError(
                f"unknown field {', '.join(map(repr, unknown))} in a {kind.value} fault;"
                f" it takes {', '.join(allowed)}"
            )
        for name, value in fields.items():
            if name in _DURATION_FIELDS and isinstance(value, str):
                fields[name] = parse_duration(value)
        return cls(kind, **fields)

    def as_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data; ``from_dict`` reads it back to an equal spec."""
        data: dict[str, Any] = {"kind": self.kind.value}
        for name in (*_ALL_PARAMETERS, "duration", "count"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    # ------------------------------------------------------------------ compact text

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """The spec in compact syntax (one fault: see the module's grammar).

        Raises:
            FaultSpecError: saying what was wrong and what is expected.
        """
        if not isinstance(text, str):
            raise FaultSpecError(f"a fault in compact syntax is a string, got {text!r}")
        body, suffixes = _split_suffixes(" ".join(text.split()))
        name, _, argument = body.partition(":")
        kind = _to_kind(name.strip())
        fields = _parse_argument(kind, argument.strip())
        if "for" in suffixes:
            fields["duration"] = parse_duration(suffixes["for"])
        if "times" in suffixes:
            fields["count"] = _parse_whole(suffixes["times"], "times")
        return cls(kind, **fields)

    def __str__(self) -> str:
        """The spec in compact syntax; ``FaultSpec.parse`` reads it back to an equal spec."""
        kind = self.kind
        argument = ""
        if self.probability is not None:
            argument = repr(self.probability)
        elif kind is FaultKind.CRASH:
            argument = f"after {self.after}" if self.after is not None else "next"
        elif kind is FaultKind.LATENCY:
            assert self.delay is not None
            if self.distribution == "exponential":
                argument = f"exp {format_duration(self.delay)}"
            elif self.delay_max is not None:
                argument = f"{format_duration(self.delay)}..{format_duration(self.delay_max)}"
            else:
                argument = format_duration(self.delay)
        elif kind is FaultKind.SLOW_START:
            assert self.delay is not None
            argument = format_duration(self.delay)
        elif kind is FaultKind.KILL:
            argument = f"every {format_duration(self.every)}" if self.every else "once"
        elif kind is FaultKind.PAUSE:
            assert self.pause_for is not None
            argument = format_duration(self.pause_for)
        text = f"{kind.value}:{argument}" if argument else kind.value
        if self.duration is not None:
            text += f" for {format_duration(self.duration)}"
        if self.count is not None and not (self.one_shot and self.count == 1):
            text += f" times {self.count}"
        return text


def parse_fault_list(text: str) -> list[FaultSpec]:
    """The faults of a comma-separated list in compact syntax (see the module's grammar),
    as ``cws chaos run --faults 'crash:0.05,latency:10ms..50ms,kill:every 10s'`` takes
    them. Blank text is no faults.

    Raises:
        FaultSpecError: naming the fault (by position and text) that is wrong, and why.
    """
    if not isinstance(text, str):
        raise FaultSpecError(f"a fault list is a string, got {text!r}")
    if not text.strip():
        return []
    specs = []
    for position, item in enumerate(text.split(","), start=1):
        if not item.strip():
            raise FaultSpecError(
                f"fault {position} of {text!r} is empty; separate faults with one comma"
            )
        try:
            specs.append(FaultSpec.parse(item))
        except FaultSpecError as exc:
            raise FaultSpecError(f"fault {position} ({item.strip()!r}): {exc}") from None
    return specs


# ---------------------------------------------------------------------- pieces

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PROBABILITY = re.compile(_NUMBER)
_SUFFIX = re.compile(r"^(?P<body>.*?)\s+(?P<word>for|times)\s+(?P<value>\S+)$")


def parse_duration(text: str) -> float:
    """Seconds from ``10ms``, ``1.5s`` or ``2m`` (the grammar of
    :func:`cws_actors.parse_duration`, which also reads ``12h`` and ``30d``).

    Raises:
        FaultSpecError: not a number with one of the units ms, s, m, h or d.
    """
    try:
        return _parse_duration(text)
    except ValueError as exc:
        raise FaultSpecError(str(exc)) from None


def format_duration(seconds: float) -> str:
    """The shortest of ``10ms``, ``2m`` and ``1.5s`` that ``parse_duration`` reads back
    as exactly ``seconds``."""
    candidates = []
    if 0 < seconds < 1:
        candidates.append(f"{seconds * 1000:.12g}ms")
    if seconds >= 60 and seconds % 60 == 0:
        candidates.append(f"{seconds / 60:.12g}m")
    candidates.append(f"{seconds:.12g}s")
    for text in candidates:
        if "e" not in text and parse_duration(text) == seconds:
            return text
    return f"{decimal.Decimal(repr(seconds)):f}s"  # exact: the shortest repr, unexponented


def _split_suffixes(text: str) -> tuple[str, dict[str, str]]:
    suffixes: dict[str, str] = {}
    while True:
        match = _SUFFIX.match(text)
        if match is None:
            return text, suffixes
        word = match["word"]
        if word in suffixes:
            raise FaultSpecError(f"'{word}' is given twice")
        suffixes[word] = match["value"]
        text = match["body"]


def _parse_argument(kind: FaultKind, argument: str) -> dict[str, Any]:
    if kind is FaultKind.CRASH:
        if argument in ("", "next"):
            return {}
        if argument.startswith("after"):
            return {"after": _parse_whole(argument[len("after") :].strip(), "crash after")}
        return {"probability": _parse_probability(argument, kind, "next, after N or P")}
    if kind is FaultKind.HANG:
        return {} if not argument else {"probability": _parse_probability(argument, kind, "P")}
    if kind in (FaultKind.ERROR_RATE, FaultKind.DROP):
        return {"probability": _parse_probability(argument, kind, "P")}
    if kind is FaultKind.LATENCY:
        return _parse_latency(argument)
    if kind is FaultKind.SLOW_START:
        return {"delay": _require_duration(argument, "slow_start:2s")}
    if kind is FaultKind.PAUSE:
        return {"pause_for": _require_duration(argument, "pause:5s")}
    if kind is FaultKind.KILL:
        if argument in ("", "once"):
            return {}
        if argument.startswith("every"):
            return {"every": parse_duration(argument[len("every") :])}
        raise FaultSpecError(f"kill takes 'once' or 'every DURATION', got {argument!r}")
    if argument:  # memory_hog
        raise FaultSpecError(f"{kind.value} takes no argument, got {argument!r}")
    return {}


def _parse_latency(argument: str) -> dict[str, Any]:
    if not argument:
        raise FaultSpecError(
            "latency needs a delay: latency:10ms, latency:10ms..50ms or latency:exp 20ms"
        )
    if argument.startswith("exp"):
        return {"delay": parse_duration(argument[len("exp") :]), "distribution": "exponential"}
    low, dots, high = argument.partition("..")
    if dots:
        return {"delay": parse_duration(low), "delay_max": parse_duration(high)}
    return {"delay": parse_duration(argument)}


def _require_duration(argument: str, example: str) -> float:
    if not argument:
        raise FaultSpecError(f"it needs a duration, as in {example}")
    return parse_duration(argument)


def _parse_probability(text: str, kind: FaultKind, expected: str) -> float:
    if not text:
        raise FaultSpecError(f"{kind.value} needs a probability, as in {kind.value}:0.1")
    if not _PROBABILITY.fullmatch(text):
        raise FaultSpecError(
            f"{kind.value} takes {expected} (P a probability from 0 to 1), got {text!r}"
        )
    return float(text)


def _parse_whole(text: str, what: str) -> int:
    if not text.isdigit():
        raise FaultSpecError(f"{what} takes a whole number, got {text!r}")
    return int(text)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultSpecError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise FaultSpecError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _whole(value: Any, what: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultSpecError(f"{what} must be a whole number >= {minimum}, got {value!r}")
