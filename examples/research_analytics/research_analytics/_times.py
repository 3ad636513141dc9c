"""Wall-clock times: parsing what events, flags and queries carry, and printing them.

Every time inside the plugin is epoch seconds (UTC) as a float; ISO 8601 strings are
only at the edges. A time without a timezone is taken as UTC.
"""

from __future__ import annotations

import datetime
import math
import re

_RANGE = re.compile(r"([1-9][0-9]{0,5})([dh])")
_LATEST = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC).timestamp()
MAX_RANGE_DAYS = 3660
"""The longest time range a report covers (about ten years)."""


def parse_instant(value: object) -> float:
    """Epoch seconds from an ISO 8601 string (``2024-05-01T12:00:00Z``) or a number of
    epoch seconds.

    Raises:
        TypeError: neither a string nor a number.
        ValueError: a string that is not ISO 8601, or a time before 1970 or after 9998.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"a time must be ISO 8601 text or epoch seconds, got {value!r}")
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                "a time must be ISO 8601 such as '2024-05-01' or '2024-05-01T12:00:00Z',"
                f" got {value!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        epoch = moment.timestamp()
    else:
        epoch = float(value)
    if not (math.isfinite(epoch) and 0 <= epoch < _LATEST):
        raise ValueError(f"a time must be between 1970 and 9998, got {value!r}")
    return epoch


def parse_timerange(value: str) -> float:
    """Seconds in a time range written ``Nd`` (days) or ``Nh`` (hours), N >= 1.

    Raises:
        ValueError: any other text, or a range over :data:`MAX_RANGE_DAYS`.
    """
    match = _RANGE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"timerange must be a number of days or hours such as '7d' or '24h', got {value!r}"
        )
    seconds = int(match[1]) * (86400 if match[2] == "d" else 3600)
    if seconds > MAX_RANGE_DAYS * 86400:
        raise ValueError(f"timerange must be at most {MAX_RANGE_DAYS}d, got {value!r}")
    return float(seconds)


def format_instant(epoch: float) -> str:
    """ISO 8601 in UTC, to the second: ``2024-05-01T12:00:00+00:00``."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="seconds")
