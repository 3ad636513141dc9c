"""One grammar for the durations people write (fault specs, chaos runs, token
lifetimes): a number, then a unit."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds from ``10ms``, ``1.5s``, ``15m``, ``12h`` or ``30d``.

    Raises:
        ValueError: not a number followed by one of the units ms, s, m, h or d.
    """
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; expected a number with ms, s or m (or h, d),"
            " such as 10ms, 1.5s, 15m, 12h or 30d"
        )
    number, unit = match.groups()
    if unit == "ms":
        return float(number) / 1000  # not * 0.001: 10ms must read back as exactly 0.01
    return float(number) * _UNITS[unit]
