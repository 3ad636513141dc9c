"""``/api/v1/events``: publish an event (``events:publish``), and follow the bus as a
server-sent event stream (``/api/v1/events/stream``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response, request

from cws_actors import check_topic

from ._problems import HTTPProblem
from ._requests import current_daemon, field, json_body, principal
from ._routes import Access, Body, Reply, Route, query, route
from ._shapes import EVENT
from ._views import event_view

blueprint = Blueprint("events", __name__)

MAX_STREAM_TOPICS = 32
"""The most topic patterns one stream follows (each is bounded by the bus)."""

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
    "get", "/api/v1/events/stream", "Follow the event bus (Server-Sent Events)",
    (Reply(200, "The stream: one message per event", {"type": "string"},
           "text/event-stream"),),
    params=(query("topics", {
        "type": "string", "maxLength": 255, "default": "#",
        "pattern": rf"^{_PATTERN}(?:,{_PATTERN}){{0,{MAX_STREAM_TOPICS - 1}}}$",
        "description": "comma-separated topic patterns ('*' one word, '#' any words): at"
        f" most {MAX_STREAM_TOPICS} topic patterns of at most 32 dot-separated words each,"
        " at most 255 characters in all",
    }, "the topic patterns to follow (default: every topic)"),),
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
    try:
        subscription = current_daemon().runtime.bus.subscribe(*topics, buffer=1000)
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None

    async def events() -> AsyncIterator[bytes]:
        with subscription:
            yield b": connected\n\n"
            while True:
                with trio.move_on_after(15) as idle:
                    event = await subscription.receive()
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                # No `event:` field: EventSource's onmessage then sees every topic
                # (the topic is in the data).
                data = json.dumps(event_view(event))
                yield f"id: {event.id}\ndata: {data}\n\n".encode()

    response = Response(events(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response
