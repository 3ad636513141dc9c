"""Usage hours and costs from recorded lifecycle events: pure functions, no I/O.

An instance runs from ``instance.launched`` or ``instance.started`` until
``instance.stopped`` or ``instance.terminated``. A start while running and a stop while
stopped change nothing, so repeated or reordered deliveries of one transition are
harmless once the events are sorted by their time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

START_TOPICS = frozenset({"instance.launched", "instance.started"})
STOP_TOPICS = frozenset({"instance.stopped", "instance.terminated"})
TOPICS = tuple(sorted(START_TOPICS | STOP_TOPICS))
"""The topics the plugin subscribes to."""
UNKNOWN = "unknown"
"""Shown for a provider or instance type no event has named."""


@attrs.frozen
class UsageEvent:
    """One recorded lifecycle event of an instance."""

    instance_id: str
    topic: str
    at: float
    """Epoch seconds."""
    instance_type: str | None = None
    provider: str | None = None


@attrs.frozen
class Prices:
    """Price per instance-hour by instance type, from the plugin's config."""

    per_type: Mapping[str, float] = attrs.field(factory=dict)
    default: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Prices:
        """Read ``config["prices"]`` (type -> price per hour) and ``config["default_price"]``.

        Raises:
            TypeError: ``prices`` is not a table.
            ValueError: a price that is not a number >= 0.
        """
        table = config.get("prices", {})
        if not isinstance(table, Mapping):
            raise TypeError(
                f"config 'prices' must map instance types to prices per hour, got {table!r}"
            )
        per_type = {str(kind): _price(f"prices[{kind!r}]", price) for kind, price in table.items()}
        default = _price("default_price", config.get("default_price", 0.0))
        return cls(per_type, default)

    def hourly(self, instance_type: str | None) -> float:
        if instance_type is None:
            return self.default
        return self.per_type.get(instance_type, self.default)


def _price(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"config {key} must be a price per hour >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"config {key} must be a price per hour >= 0, got {value!r}")
    return float(value)


@attrs.frozen
class InstanceUsage:
    """One instance's share of a report."""

    id: str
    provider: str
    type: str
    hours: float
    cost: float


@attrs.frozen
class UsageReport:
    """Usage between ``range_start`` and ``range_end`` (epoch seconds)."""

    range_start: float
    range_end: float
    instances: tuple[InstanceUsage, ...]

    @property
    def total_hours(self) -> float:
        return round(sum(usage.hours for usage in self.instances), 4)

    @property
    def total_cost(self) -> float:
        return round(sum(usage.cost for usage in self.instances), 6)


@attrs.frozen
class _Interval:
    start: float
    end: float
    instance_type: str | None


def build_report(
    events: Iterable[UsageEvent], *, start: float, end: float, now: float, prices: Prices
) -> UsageReport:
    """Hours (clipped to ``[start, end]``) and costs per instance.

    Args:
        events: the recorded events, in any order; those after ``end`` may be left out.
        start, end: the report's range, epoch seconds.
        now: when the report is made; an instance still running counts until
            ``min(now, end)``.
        prices: what an hour of each instance type costs.

    Returns:
        The instances that ran in the range, sorted by id.
    """
    by_instance: dict[str, list[UsageEvent]] = {}
    for event in events:
        by_instance.setdefault(event.instance_id, []).append(event)
    rows = []
    for instance_id, history in sorted(by_instance.items()):
        history.sort(key=lambda event: event.at)  # stable: equal times keep arrival order
        seconds, cost = 0.0, 0.0
        for interval in _running_intervals(history, until=min(now, end)):
            overlap = min(interval.end, end) - max(interval.start, start)
            if overlap > 0:
                seconds += overlap
                cost += overlap / 3600 * prices.hourly(interval.instance_type)
        if seconds > 0:
            rows.append(
                InstanceUsage(
                    id=instance_id,
                    provider=_latest(history, "provider"),
                    type=_latest(history, "instance_type"),
                    hours=round(seconds / 3600, 4),
                    cost=round(cost, 6),
                )
            )
    return UsageReport(start, end, tuple(rows))


def _running_intervals(history: list[UsageEvent], *, until: float) -> list[_Interval]:
    """The intervals in which the instance ran; one still open ends at ``until``."""
    intervals = []
    opened: UsageEvent | None = None
    known_type: str | None = None
    for event in history:
        known_type = event.instance_type or known_type
        if event.topic in START_TOPICS and opened is None:
            opened = attrs.evolve(event, instance_type=known_type)
        elif event.topic in STOP_TOPICS and opened is not None:
            intervals.append(_Interval(opened.at, event.at, opened.instance_type or known_type))
            opened = None
    if opened is not None and opened.at < until:
        intervals.append(_Interval(opened.at, until, opened.instance_type or known_type))
    return intervals


def _latest(history: list[UsageEvent], field: str) -> str:
    for event in reversed(history):
        value: str | None = getattr(event, field)
        if value:
            return value
    return UNKNOWN
