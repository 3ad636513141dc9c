"""The event bus: topics with wildcards, delivered to actors through the router."""

from __future__ import annotations

import collections
import functools
import itertools
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import attrs
import trio

from ._durable import EventStore

_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")

MAX_TOPIC_LENGTH = 255
"""The longest topic or topic pattern, in characters (AMQP's bound on a routing key)."""
MAX_TOPIC_SEGMENTS = 32
"""The most dot-separated segments in a topic or a topic pattern."""


def _check_size(kind: str, text: str) -> None:
    if len(text) > MAX_TOPIC_LENGTH:
        raise ValueError(
            f"a topic {kind} is at most {MAX_TOPIC_LENGTH} characters, got one of"
            f" {len(text)} starting {text[:40]!r}"
        )
    segments = text.count(".") + 1
    if segments > MAX_TOPIC_SEGMENTS:
        raise ValueError(
            f"a topic {kind} has at most {MAX_TOPIC_SEGMENTS} dot-separated segments, got"
            f" {segments} in {text[:40]!r}..."
        )


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> tuple[str, ...]:
    """Check a topic pattern and split it: dot-separated segments, ``*`` for exactly one
    segment, ``#`` for any number of segments (zero included).

    Raises:
        ValueError: an empty segment, or one with characters other than letters,
            digits, ``_`` and ``-``; more than :data:`MAX_TOPIC_LENGTH` characters or
            :data:`MAX_TOPIC_SEGMENTS` segments.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a topic pattern must be a non-empty str, got {pattern!r}")
    _check_size("pattern", pattern)
    segments = tuple(pattern.split("."))
    for segment in segments:
        if segment not in ("*", "#") and not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"bad topic pattern {pattern!r}: segments are words, '*' or '#', got {segment!r}"
            )
    return segments


def check_topic(topic: str) -> None:
    """Check a topic: dot-separated words of letters, digits, ``_`` and ``-``.

    Raises:
        ValueError: a bad topic, or more than :data:`MAX_TOPIC_LENGTH` characters or
            :data:`MAX_TOPIC_SEGMENTS` segments.
    """
    if not isinstance(topic, str) or not all(_SEGMENT.fullmatch(s) for s in topic.split(".")):
        raise ValueError(
            f"bad topic {topic!r}: expected dot-separated words such as 'instance.started'"
        )
    _check_size("name", topic)


@functools.lru_cache(maxsize=16384)
def topic_matches(pattern: str, topic: str) -> bool:
    """Does ``topic`` match ``pattern``?"""
    return _match(compile_pattern(pattern), topic.split("."))


def _match(pattern: tuple[str, ...], topic: list[str]) -> bool:
    """Match without backtracking or recursion: the set of pattern positions still alive
    advances one topic segment at a time, so a match costs at most (topic segments) x
    (pattern segments) steps and never raises, whatever the pattern."""
    alive = _past_hashes(pattern, {0})
    for word in topic:
        step: set[int] = set()
        for position in alive:
            if position == len(pattern):
                continue
            head = pattern[position]
            if head == "#":
                step.add(position)  # '#' takes this word too
            elif head == "*" or head == word:
                step.add(position + 1)
        if not step:
            return False
        alive = _past_hashes(pattern, step)
    return len(pattern) in alive


def _past_hashes(pattern: tuple[str, ...], alive: set[int]) -> set[int]:
    """``alive`` and, past each ``#``, the positions after it (it may take no word)."""
    more = set(alive)
    for position in alive:
        while position < len(pattern) and pattern[position] == "#":
            position += 1
            more.add(position)
    return more


@attrs.frozen
class Event:
    """Something that happened, published on ``topic``."""

    id: int
    """The event's number, durable or not, taken when it is published.

    With a state file (``RuntimeConfig.state_path``): unique among every event ever
    published in that home, durable or not, across restarts and crashes of the runtime,
    for as long as the file lives; and increasing: an event published after another
    (in one runtime, or in a later run on the same file) has a bigger id. Ids are not
    contiguous (a restart skips ids), and delivery order is not id order (a durable
    event is delivered once stored, a redelivered one long after). A redelivered durable
    event keeps its id, so handlers deduplicate on it (delivery is at-least-once).

    Without a state file: unique and increasing within this runtime only; they start
    again at 1 in the next one."""
    topic: str
    payload: Any
    published_at: float
    source: str | None = None
    durable: bool = False


@attrs.define(eq=False)
class Subscription:
    """A stream of events for code that is not an actor (an SSE response, a test).

    Its buffer is bounded: when its reader falls behind, the overflow goes to the
    dead-letter log and the publisher never waits."""

    patterns: tuple[str, ...]
    _send: trio.MemorySendChannel[Event]
    _receive: trio.MemoryReceiveChannel[Event]
    _close: Callable[[Subscription], None]
    _closed: bool = attrs.field(default=False, init=False)

    def matches(self, topic: str) -> bool:
        return any(topic_matches(p, topic) for p in self.patterns)

    def offer(self, event: Event) -> bool:
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._receive.__aiter__()

    async def receive(self) -> Event:
        return await self._receive.receive()

    def receive_nowait(self) -> Event:
        """The next buffered event.

        Raises:
            trio.WouldBlock: none is buffered.
        """
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Stop receiving; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._close(self)
        self._send.close()
        self._receive.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@attrs.define(eq=False)
class EventHistory:
    """The last ``capacity`` non-durable events this bus delivered, in memory, so that a
    reader who reconnects (an SSE client's ``Last-Event-ID``) gets what it missed.

    Durable events are not kept here: the event store has them all. ``reach`` says how
    far back the history is complete: every non-durable event of this home with an id
    above it is here (until it is evicted), so a reader who last saw id ``n`` missed
    nothing that is gone when ``n >= reach``."""

    capacity: int
    reach: int = 0
    """Events with an id up to this one may be gone: the biggest evicted id, or the id
    taken when the bus opened (earlier events belong to an earlier run)."""
    _events: collections.deque[Event] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.capacity, int) or self.capacity < 0:
            raise ValueError(f"an event history holds >= 0 events, got {self.capacity!r}")
        self._events = collections.deque()

    def add(self, event: Event) -> None:
        if self.capacity == 0:
            self.reach = max(self.reach, event.id)
            return
        if len(self._events) == self.capacity:
            self.reach = max(self.reach, self._events.popleft().id)
        self._events.append(event)

    def since(self, after: int) -> tuple[list[Event], bool]:
        """The events kept with an id above ``after``, oldest first, and whether that is
        all of them (False: some were evicted, or belong to an earlier run)."""
        return [e for e in self._events if e.id > after], after >= self.reach

    def __len__(self) -> int:
        return len(self._events)


class BusBackend(Protocol):
    """How events travel from publishers to this process's subscribers.

    The bus hands every event to ``send``; the backend calls the ``deliver`` function
    it was attached to for every event that reaches this process (its own included).
    A broker backend (NATS JetStream, Redis Streams) plugs in here; actors do not change.
    """

    def attach(self, deliver: Callable[[Event], None]) -> None: ...

    def send(self, event: Event) -> None: ...


@attrs.define(eq=False)
class InMemoryBackend:
    """The embedded default: events reach this process's subscribers only."""

    _deliver: Callable[[Event], None] | None = None

    def attach(self, deliver: Callable[[Event], None]) -> None:
        self._deliver = deliver

    def send(self, event: Event) -> None:
        if self._deliver is None:
            raise RuntimeError("the in-memory bus backend is not attached to a bus")
        self._deliver(event)


@attrs.define(eq=False)
class EventBus:
    """Publish and subscribe. Deliveries to actors go through ``deliver`` (the router's
    bus entry), so rate limits, readiness and mailbox bounds apply to events too."""

    _deliver: Callable[[str, Event], None]
    _drop: Callable[[Event, str], None]
    backend: BusBackend = attrs.field(factory=InMemoryBackend)
    store: EventStore | None = None
    history_size: int = 1000
    """How many non-durable events :attr:`history` keeps (0: none)."""
    history: EventHistory = attrs.field(init=False)
    """The last non-durable events delivered (see :class:`EventHistory`)."""
    _durable: list[str] = attrs.field(factory=list, init=False)
    _actors: dict[str, tuple[str, ...]] = attrs.field(factory=dict, init=False)
    _streams: list[Subscription] = attrs.field(factory=list, init=False)
    _published: int = attrs.field(default=0, init=False)
    _next_event_id: Callable[[], int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.backend.attach(self._fan_out)
        # One id space for all the events of a home: the store numbers them, durable or
        # not (a durable event gets its id from the same allocator inside `append`).
        # Without a store, a counter: ids are then unique per bus, that is per runtime.
        if self.store is not None:
            self._next_event_id = self.store.next_event_id
        else:
            self._next_event_id = itertools.count(1).__next__
        # The history knows nothing before the bus opened: with a store (ids go on across
        # runs), one id marks that point (ids are not contiguous anyway), so that a
        # reader of an earlier run hears that it missed what it missed.
        start = self._next_event_id() if self.store is not None else 0
        self.history = EventHistory(self.history_size, reach=start)

    def declare_durable(self, pattern: str) -> None:
        """Make the topics matching ``pattern`` durable: their events are stored before
        ``publish`` returns and redelivered until each subscriber acknowledges them.

        Raises:
            ValueError: a bad pattern, or no event store (set ``RuntimeConfig.state_path``).
        """
        compile_pattern(pattern)
        if self.store is None:
            raise ValueError(
                f"durable topic {pattern!r} needs an event store:"
                " set RuntimeConfig(state_path=...) to a SQLite file"
            )
        if pattern not in self._durable:
            self._durable.append(pattern)

    def is_durable(self, topic: str) -> bool:
        return any(topic_matches(pattern, topic) for pattern in self._durable)

    def publish_nowait(
        self, topic: str, payload: Any = None, *, source: str | None = None
    ) -> Event:
        """Publish an event and return it, without waiting: a subscriber that cannot
        take it now gets a dead letter instead.

        Raises:
            ValueError: a bad topic, or a durable one (use ``await publish()``).
        """
        check_topic(topic)
        if self._durable and self.is_durable(topic):
            raise ValueError(
                f"topic {topic!r} is durable: use `await publish(...)`, which returns"
                " once the event is stored"
            )
        event = Event(self._next_event_id(), topic, payload, trio.current_time(), source)
        self._published += 1
        self.backend.send(event)
        return event

    async def publish(self, topic: str, payload: Any = None, *, source: str | None = None) -> Event:
        """Publish an event; for a durable topic, return once it is stored.

        Raises:
            ValueError: a bad topic.
            TypeError: a durable event whose payload is not JSON-serializable.
        """
        check_topic(topic)
        if not (self._durable and self.is_durable(topic)):
            event = self.publish_nowait(topic, payload, source=source)
            await trio.lowlevel.checkpoint()
            return event
        assert self.store is not None
        stored = await self.store.append(topic, payload, source, self.subscribers(topic))
        event = Event(stored.id, topic, payload, stored.published_at, source, durable=True)
        self._published += 1
        self.backend.send(event)
        return event

    def _fan_out(self, event: Event) -> None:
        topic = event.topic
        if not event.durable:
            self.history.add(event)
        for path, patterns in list(self._actors.items()):
            if any(topic_matches(p, topic) for p in patterns):
                self._deliver(path, event)
        for stream in list(self._streams):
            if stream.matches(topic) and not stream.offer(event):
                self._drop(event, "subscriber_full")

    def subscribe_actor(self, path: str, patterns: tuple[str, ...]) -> None:
        for pattern in patterns:
            compile_pattern(pattern)
        self._actors[path] = patterns

    def unsubscribe_actor(self, path: str) -> None:
        self._actors.pop(path, None)

    def subscribe(self, *patterns: str, buffer: int = 100) -> Subscription:
        """Open a stream of the events matching ``patterns``; close it when done."""
        if not patterns:
            raise ValueError("subscribe() needs at least one topic pattern, such as '#'")
        for pattern in patterns:
            compile_pattern(pattern)
        send, receive = trio.open_memory_channel[Event](buffer if buffer > 0 else math.inf)
        subscription = Subscription(patterns, send, receive, self._streams.remove)
        self._streams.append(subscription)
        return subscription

    def subscribers(self, topic: str) -> list[str]:
        """The paths of the actors that receive ``topic``."""
        return [
            path
            for path, patterns in self._actors.items()
            if any(topic_matches(p, topic) for p in patterns)
        ]

    @property
    def published(self) -> int:
        return self._published
