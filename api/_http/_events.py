"""``/api/v1/events``: publish an event (``events:publish``), and follow the bus as a
server-sent event stream (``/api/v1/events/stream``, ``events:read``).

Each message carries ``id`` (the event's id), ``event`` (its topic) and ``data`` (its
JSON view); the stream starts with ``retry:``. A client that reconnects with
``Last-Event-ID`` first gets what it missed: the durable topics' events from the event
store, the others from the bus's in-memory history (``[events] replay_buffer``), with a
comment line when that history no longer reaches back to the client's last event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response, request

from cws_actors import Event, EventBus, Subscription, check_topic

from ._problems import HTTPProblem
from ._requests import current_daemon, field, json_body, principal
from ._routes import Access, Body, Reply, Route, header, header_value, query, route
from ._shapes import EVENT
from ._views import event_view

blueprint = Blueprint("events", __name__)

MAX_STREAM_TOPICS = 32
"""The most topic patterns one stream follows (each is bounded by the bus)."""
RETRY_MS = 2000
"""The ``retry:`` the stream starts with: milliseconds a client waits to reconnect."""
MAX_REPLAY = 10_000
"""The most missed events one connection replays; past them it ends, and the client
reconnects from the last one it got."""
_PAGE = 1000
"""Durable events read from the store at a time."""

# The routes' declarations (``_routes``): the document's operations and the checks made
# before each handler runs.
_WORD = "[A-Za-z0-9_-]+"
_PATTERN = r"(?:[A-Za-z0-9_-]+|\*|#)(?:\.(?:[A-Za-z0-9_-]+|\*|#)){0,31}"
PUBLISH = Route(
    "post", "/api/v1/events", "Publish an event on a topic",
    (Reply(202, "Published", EVENT),),
    Access.TOKEN, ("events:publish",),
    body=Body({
        "type": "object",
        "required": ["topic"],
        "properties": {
            "topic": {
                "type": "string", "maxLength": 255,
                "pattern": rf"^{_WORD}(?:\.{_WORD}){{0,31}}$",
                "description": "dot-separated words of letters, digits, '_' and '-' without"
                " wildcards (at most 32 words, 255 characters), such as 'instance.started'",
            },
            "payload": {},
        },
    }, examples=({"topic": "instance.started", "payload": {"id": "i-1"}},)),
    problems=(503,),
)  # fmt: skip
STREAM = Route(
    "get", "/api/v1/events/stream",
    "Follow the event bus (Server-Sent Events; Last-Event-ID replays what was missed)",
    (Reply(200, "The stream: it starts with `retry:`; then one message per event, its"
           " `id` (the event's id), `event` (its topic) and `data` (the event as JSON, as"
           " POST /api/v1/events answers it); `:` comment lines keep it alive and say when"
           " a replay is incomplete", {"type": "string"}, "text/event-stream",
           headers={"Cache-Control": "no-cache"}),),
    Access.EVENTS, ("events:read",),
    params=(query("topics", {
        "type": "string", "maxLength": 255, "default": "#",
        "pattern": rf"^{_PATTERN}(?:,{_PATTERN}){{0,{MAX_STREAM_TOPICS - 1}}}$",
        "description": "comma-separated topic patterns ('*' one word, '#' any words): at"
        f" most {MAX_STREAM_TOPICS} topic patterns of at most 32 dot-separated words each,"
        " at most 255 characters in all",
    }, "the topic patterns to follow (default: every topic)"),
    header("Last-Event-ID", {
        "type": "string", "pattern": "^[0-9]{0,19}$",
        "description": "the id of an event this stream sent (an integer >= 0; empty: none)",
    }, "a reconnecting client's last event: the stream first sends what it missed"
       " (durable topics from the event store, the others from the last"
       " [events] replay_buffer events kept in memory)"),),
)  # fmt: skip


@route(blueprint, PUBLISH)
async def publish() -> Any:
    await principal("events:publish")
    body = await json_body()
    topic = field(body, "topic", str)
    if not topic or any(not part for part in topic.split(".")) or set("*#") & set(topic):
        raise HTTPProblem(
            400,
            "Bad request",
            f"a topic is dot-separated words without wildcards, got {topic!r}",
        )
    try:
        check_topic(topic)  # the bus's own rule: letters, digits, '_' and '-'
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None
    daemon = current_daemon()
    if not daemon.plugins_loaded.is_set():
        # Subscriptions come with the plugins: an event published now would miss them.
        waiting = "; ".join(daemon.waiting_for())
        raise HTTPProblem(
            503, "Not ready",
            "plugins are still loading, and an event published now would miss their"
            f" subscriptions; retry once /readyz answers 200 ({waiting})",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    event = await daemon.runtime.publish(topic, body.get("payload"), source="http")
    return event_view(event), 202


@route(blueprint, STREAM)
async def stream() -> Any:
    topics = [t for t in request.args.get("topics", "#").split(",") if t.strip()]
    if len(topics) > MAX_STREAM_TOPICS:
        raise HTTPProblem(
            400,
            "Bad request",
            f"a stream follows at most {MAX_STREAM_TOPICS} topic patterns, got {len(topics)};"
            " use wildcards ('instance.*', 'plugin.#') instead of listing topics",
        )
    last_seen = _last_event_id()
    bus = current_daemon().runtime.bus
    try:
        # Subscribed before the replay is read: nothing published meanwhile is lost
        # (what both see is sent once).
        subscription = bus.subscribe(*topics, buffer=1000)
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None

    async def events() -> AsyncIterator[bytes]:
        with subscription:
            yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
            replayed: set[int] = set()
            if last_seen is not None:
                missed, notice = await _missed(bus, subscription, last_seen)
                if notice:
                    yield notice.encode()
                for event in missed:
                    replayed.add(event.id)
                    yield _message(event)
                if len(missed) >= MAX_REPLAY:
                    # The rest on the next connection: the client reconnects from the
                    # last id it got (EventSource does, after `retry` ms).
                    yield f": replayed {MAX_REPLAY} events; reconnect for the rest\n\n".encode()
                    return
            while True:
                with trio.move_on_after(15) as idle:
                    event = await subscription.receive()
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                if event.id in replayed:  # published while the replay was read
                    replayed.discard(event.id)
                    continue
                yield _message(event)

    response = Response(events(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response


def _last_event_id() -> int | None:
    """The ``Last-Event-ID`` header (a reconnecting client's last event; checked by its
    declaration in :data:`STREAM`), if any."""
    raw = (header_value("Last-Event-ID") or "").strip()
    return int(raw) if raw else None


async def _missed(bus: EventBus, subscription: Subscription, after: int) -> tuple[list[Event], str]:
    """What a client who last saw the event ``after`` missed on ``subscription``'s
    topics, oldest first (at most :data:`MAX_REPLAY`): the durable topics' events from
    the store, the others from the bus's history; and a comment line when the history
    no longer reaches back to ``after``."""
    kept, complete = bus.history.since(after)
    durable: list[Event] = []
    store = bus.store
    if store is not None:
        cursor = after
        # MAX_REPLAY durable ones at least (or all): then the first MAX_REPLAY of the
        # merged list leave out no durable event below the last one sent.
        while len(durable) < MAX_REPLAY:
            page = await store.events_after(cursor, limit=_PAGE)
            durable += [
                Event(s.id, s.topic, s.payload, s.published_at, s.source, durable=True)
                for s in page
                if subscription.matches(s.topic)
            ]
            if len(page) < _PAGE:
                break
            cursor = page[-1].id
    missed = sorted(
        [*durable, *(event for event in kept if subscription.matches(event.topic))],
        key=lambda event: event.id,
    )
    notice = ""
    if not complete:
        oldest = f"from id {kept[0].id}" if kept else "none"
        notice = (
            f": events after id {after} may be missing: the memory keeps the last"
            f" {bus.history.capacity} non-durable events ({oldest}) and no longer reaches"
            " that far; durable topics are replayed in full\n\n"
        )
    return missed[:MAX_REPLAY], notice


def _message(event: Event) -> bytes:
    """One SSE message: the event's id (for ``Last-Event-ID``), its topic as the event
    type, and its JSON view as data."""
    data = json.dumps(event_view(event))
    return f"id: {event.id}\nevent: {event.topic}\ndata: {data}\n\n".encode()
