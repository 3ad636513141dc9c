"""Reading an instance lifecycle event's payload.

The providers publish an instance description as a dict (``id``, ``name``, ``type``,
``region``, ``zone``, ``state``, ``provider``, ``launch_time``, ``tags``). The plugin
reads ``id``, ``type`` and ``provider``, and one key of its own: ``at``, when the
transition happened (ISO 8601 or epoch seconds). Without ``at`` the event counts as
happening when the plugin handles it: the bus's ``Event.published_at`` is Trio's clock,
not the wall clock, so it cannot say when.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._times import parse_instant
from ._usage import TOPICS, UsageEvent


def usage_event_from(topic: str, payload: object, *, received_at: float) -> UsageEvent:
    """The usage event in ``payload``, published on ``topic``.

    Args:
        topic: one of the lifecycle topics (``instance.started``...).
        payload: the instance description.
        received_at: epoch seconds to use when the payload has no ``at``.

    Raises:
        TypeError: the payload is not a dict, or a field has the wrong type.
        ValueError: an unknown topic, an empty ``id`` or a bad ``at``.
    """
    if topic not in TOPICS:
        raise ValueError(f"topic must be one of {', '.join(TOPICS)}, got {topic!r}")
    if not isinstance(payload, Mapping):
        raise TypeError(f"the payload must be an instance description dict, got {payload!r}")
    instance_id = payload.get("id")
    if not isinstance(instance_id, str) or not instance_id:
        raise ValueError(f"the payload's 'id' must be a non-empty string, got {instance_id!r}")
    at = payload.get("at")
    return UsageEvent(
        instance_id=instance_id,
        topic=topic,
        at=received_at if at is None else parse_instant(at),
        instance_type=_optional_text(payload, "type"),
        provider=_optional_text(payload, "provider"),
    )


def _optional_text(payload: Mapping[object, object], key: str) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"the payload's {key!r} must be a string, got {value!r}")
    return value
