"""``/api/v1/events/stream`` read by a real SSE client (httpx-sse) against a real daemon:
``retry``, ``id``, ``event`` and ``data``; a reconnect with ``Last-Event-ID`` replays
what was missed (durable topics from the store, the rest from the in-memory history,
with a comment when it no longer reaches back); the scope ``events:read`` and
``[api] open_events``."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio
from httpx_sse import ServerSentEvent, aconnect_sse

from api._daemon import Daemon

from ._daemon import TIMEOUT, client, running_daemon, token
from .test_app import assert_problem

STREAM = "/api/v1/events/stream"


class Reader:
    """An open stream's events, one at a time."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self._receive = receive

    async def next(self) -> Any:
        return await self._receive.receive()

    async def messages(self, count: int) -> list[Any]:
        return [await self.next() for _ in range(count)]


@contextlib.asynccontextmanager
async def pumped(items: AsyncIterator[Any]) -> AsyncIterator[Reader]:
    """Read ``items`` in a task, cancelled when the block ends: a cancellation unwinds
    httpx's chain of generators cleanly, where leaving them half-read would not."""
    send, receive = trio.open_memory_channel[Any](math.inf)

    async def pump() -> None:
        async for item in items:
            send.send_nowait(item)  # no checkpoint here: a cancel lands inside httpx

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            yield Reader(receive)
        finally:
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def follow(
    http: httpx.AsyncClient, topics: str = "#", last_event_id: str | None = None
) -> AsyncIterator[Reader]:
    """Connect; the block starts once the stream's ``retry`` block has arrived (the
    subscription exists then), and the connection closes when it ends."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    async with aconnect_sse(http, "GET", STREAM, params={"topics": topics},
                            headers=headers) as source:  # fmt: skip
        assert source.response.status_code == 200, await source.response.aread()
        async with pumped(source.aiter_sse()) as reader:
            first = await reader.next()
            assert (first.retry, first.data, first.id) == (2000, "", "")
            yield reader


def view(sse: ServerSentEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sse.data)
    assert sse.event == data["topic"]  # the event type is the topic
    assert sse.id == str(data["id"])
    return data


async def publish(http: httpx.AsyncClient, topic: str, payload: Any = None) -> int:
    answer = await http.post("/api/v1/events", json={"topic": topic, "payload": payload})
    assert answer.status_code == 202, answer.text
    event_id: int = answer.json()["id"]
    return event_id


async def clients(daemon: Daemon) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    reader = client(daemon, await token(daemon, "events:read"))
    return reader, client(daemon, await token(daemon, "events:publish"))


async def test_each_message_has_id_event_and_data_after_a_retry(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "home") as daemon:
        reader, publisher = await clients(daemon)
        with trio.fail_after(TIMEOUT):
            async with reader, publisher, follow(reader, "job.*") as stream:
                first = await publish(publisher, "job.done", {"n": 1})
                await publish(publisher, "other.thing")
                second = await publish(publisher, "job.failed")
                one, two = await stream.messages(2)
    assert (one.event, one.id, view(one)["payload"]) == ("job.done", str(first), {"n": 1})
    assert (two.event, two.id, view(two)["payload"]) == ("job.failed", str(second), None)


async def test_a_reconnect_with_last_event_id_replays_what_was_missed(tmp_path: Path) -> None:
    """instance.* is durable (the default durable_topics): replayed from events.db; job.*
    is not: replayed from the in-memory history. Then the stream goes on live, and an
    event is never sent twice."""
    async with running_daemon(tmp_path / "home") as daemon:
        reader, publisher = await clients(daemon)
        with trio.fail_after(TIMEOUT):
            async with reader, publisher:
                async with follow(reader, "job.*,instance.*") as stream:
                    await publish(publisher, "job.done", 1)
                    await publish(publisher, "instance.started", {"id": "i-1"})
                    seen = await stream.messages(2)
                last = seen[-1].id
                # Disconnected: all this is missed.
                missed = [
                    await publish(publisher, "job.done", 2),
                    await publish(publisher, "instance.stopped", {"id": "i-1"}),
                    await publish(publisher, "job.failed", 3),
                ]
                await publish(publisher, "elsewhere.thing")  # not followed
                async with follow(reader, "job.*,instance.*", last_event_id=last) as stream:
                    replayed = await stream.messages(3)
                    live = await publish(publisher, "job.done", 4)
                    (after,) = await stream.messages(1)
    assert [int(sse.id) for sse in replayed] == missed
    assert [(view(e)["topic"], view(e)["durable"]) for e in replayed] == [
        ("job.done", False), ("instance.stopped", True), ("job.failed", False),
    ]  # fmt: skip
    assert int(after.id) == live


async def test_a_comment_says_when_the_memory_no_longer_reaches_back(tmp_path: Path) -> None:
    """replay_buffer = 3: five events missed, the last three are replayed, and a comment
    line says the rest may be gone. Durable events are replayed in full whatever the
    buffer, after a restart of the daemon too."""
    home = tmp_path / "home"
    async with running_daemon(home, replay_buffer=3) as daemon:
        reader, publisher = await clients(daemon)
        with trio.fail_after(TIMEOUT):
            async with reader, publisher:
                async with follow(reader, "#") as stream:
                    start = await publish(publisher, "job.start")
                    await stream.messages(1)
                durable = await publish(publisher, "instance.started", {"id": "i-9"})
                missed = [await publish(publisher, "job.done", n) for n in range(5)]
                headers = {"Last-Event-ID": str(start), "Accept": "text/event-stream"}
                async with (
                    reader.stream("GET", STREAM, headers=headers) as answer,
                    pumped(answer.aiter_lines()) as lines,
                ):
                    text = ""
                    while text.count("\nid: ") < 4:
                        text += "\n" + await lines.next()
    assert f": events after id {start} may be missing" in text
    assert "keeps the last 3 non-durable events" in text
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [durable, *missed[-3:]]
    # A new run of the daemon: its memory starts empty, the store still has the event.
    async with running_daemon(home, replay_buffer=3) as daemon:
        reader = client(daemon, await token(daemon, "events:read"))
        with trio.fail_after(TIMEOUT):
            async with reader, follow(reader, "instance.*", last_event_id=str(start)) as stream:
                (again,) = await stream.messages(1)
    assert int(again.id) == durable


async def test_reading_the_stream_needs_events_read_unless_open_events(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with running_daemon(home, open_reads=True) as daemon:  # not enough
        publisher = await token(daemon, "events:publish")
        reader = await token(daemon, "events:read")
        with trio.fail_after(TIMEOUT):
            async with client(daemon) as anonymous, client(daemon, publisher) as weak:
                assert_problem(await anonymous.get(STREAM), 401, "needs a token")
                assert_problem(await weak.get(STREAM), 403, "events:read")
                bad = await anonymous.get(STREAM, headers={"Last-Event-ID": "x1"})
                assert_problem(bad, 401)
            async with client(daemon, reader) as http:
                bad = await http.get(STREAM, headers={"Last-Event-ID": "12ab"})
                assert_problem(bad, 400, "Last-Event-ID must be the id of an event")
                async with follow(http, "a.b"):
                    pass
    async with running_daemon(home, open_reads=False, open_events=True) as daemon:
        with trio.fail_after(TIMEOUT):
            async with client(daemon) as anonymous:
                async with follow(anonymous, "a.b"):  # loopback, no token
                    pass
                # A token that is presented must still be valid.
                junk = {"Authorization": "Bearer cws_0123456789abcdef_" + "x" * 43}
                assert_problem(await anonymous.get(STREAM, headers=junk), 401, "not valid")
                # The other reads keep needing a token.
                assert_problem(await anonymous.get("/api/v1/plugins"), 401, "token")
