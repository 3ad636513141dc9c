"""JSON shapes of the runtime's and the host's objects (snake_case)."""

from __future__ import annotations

import datetime
import time
from typing import Any

import attrs
import trio

from cws_actors import ActorSnapshot, DeadLetter, Event, PluginHost, PluginStatus


def plugin_view(host: PluginHost, status: PluginStatus) -> dict[str, Any]:
    view = attrs.asdict(status)
    view["last_restart_at"] = wall_time(status.last_restart_at)
    view["capabilities"] = capabilities_view(host, status.name)
    return view


def wall_time(at: float | None) -> str | None:
    """A ``trio.current_time()`` of this run as ISO-8601 UTC (``...Z``), or None."""
    if at is None:
        return None
    seconds = time.time() - (trio.current_time() - at)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def capabilities_view(host: PluginHost, name: str) -> dict[str, Any]:
    commands = [spec.full_name for plugin, spec in host.cli_commands() if plugin == name]
    endpoints = [
        f"{spec.method} {spec.path}" for plugin, spec in host.api_endpoints() if plugin == name
    ]
    events = host.event_patterns(name)
    return {"cli_commands": commands, "api_endpoints": endpoints, "event_handlers": events}


def actor_view(node: ActorSnapshot) -> dict[str, Any]:
    view: dict[str, Any] = {
        "path": node.path,
        "kind": node.kind,
        "state": node.state,
        "ready": node.ready,
        "restarts": node.restarts,
        "last_exit": node.last_exit,
        "last_restart_at": wall_time(node.last_restart_at),
        "probes": [
            {
                "kind": probe.kind.value,
                "passing": probe.passing,
                "consecutive_failures": probe.consecutive_failures,
                "checks": probe.checks,
                "last_error": probe.last_error,
            }
            for probe in node.probes
        ],
        "mailbox": attrs.asdict(node.mailbox) if node.mailbox is not None else None,
    }
    if node.kind == "actor":
        view["handling"] = node.handling
        view["max_concurrency"] = node.max_concurrency
    if node.kind == "supervisor":
        view["children"] = [actor_view(child) for child in node.children]
    return view


def event_view(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "topic": event.topic,
        "payload": event.payload,
        "source": event.source,
        "durable": event.durable,
    }


def dead_letter_view(letter: DeadLetter) -> dict[str, Any]:
    payload = letter.envelope.payload
    return letter.as_dict() | {"topic": payload.topic if isinstance(payload, Event) else None}
