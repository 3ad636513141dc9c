"""What a plugin author writes (an Actor) and what everyone holds (an ActorRef)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import trio

from ._envelope import Envelope, Source, current_envelope

if TYPE_CHECKING:
    from ._bus import Event
    from ._runtime import Runtime

_TOPICS_ATTRIBUTE = "__cws_event_topics__"

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[None]])


def on_event(*patterns: str) -> Callable[[Handler], Handler]:
    """Declare an actor method as the handler of the bus topics matching ``patterns``.

    Patterns are dot-separated; ``*`` matches one segment and ``#`` any number of them
    (``instance.*``, ``*.terminated``, ``#`` for everything). An actor with handlers is
    subscribed when spawned, and its events are routed like any message.
    """
    from ._bus import compile_pattern

    for pattern in patterns:
        compile_pattern(pattern)  # fail at class definition on a bad pattern
    if not patterns:
        raise ValueError("on_event() needs at least one topic pattern, such as 'instance.*'")

    def mark(method: Handler) -> Handler:
        setattr(method, _TOPICS_ATTRIBUTE, (*getattr(method, _TOPICS_ATTRIBUTE, ()), *patterns))
        return method

    return mark


class Actor:
    """Subclass it and override ``receive``; the runtime runs one instance per run.

    - ``on_start()`` runs before the first message of each run (a new instance after a
      restart), ``on_stop()`` after the last one, even after a crash.
    - ``receive(message)`` gets the payload; its return value answers an ``ask``. The
      envelope (deadline, source, correlation id) is ``self.envelope``. An exception
      crashes the actor: the asker gets HandlerFailed and the supervisor restarts it.
    - ``liveness()`` and ``readiness()`` are the checks behind the actor's probes; they
      run in the actor's own task, through its control lane, so a hung handler fails
      liveness. The defaults answer True.
    - Methods decorated with ``@on_event(pattern)`` handle bus events.
    """

    event_handlers: ClassVar[dict[str, tuple[str, ...]]] = {}
    max_concurrency: int = 1
    """How many messages this actor handles at once (``Runtime.spawn(max_concurrency=)``
    overrides it). Above 1, each message is handled in a task of its own inside the
    actor's scope: a crash of one handler still crashes the actor (the others are
    cancelled and their askers get ActorRestarting); an ask whose asker gives up or
    whose deadline passes has its handler cancelled; bus events are still handled one at
    a time, in order; probes run beside the handlers instead of waiting for them."""
    concurrency_groups: Mapping[str, int] = MappingProxyType({})
    """Named groups with their own limits, as in Ray: ``concurrency_group(message)``
    puts a message in one; a full group never delays another group or the default one
    (whose limit is ``max_concurrency``). Groups need ``max_concurrency`` above 1 or
    at least one group."""
    background_tasks: ClassVar[bool] = False
    """Set True to get ``self.nursery``: tasks that live as long as this run of the
    actor; one that raises crashes the actor like a handler would."""
    _ref: ActorRef | None = None
    _nursery: trio.Nursery | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers = dict(cls.event_handlers)
        for name, member in vars(cls).items():
            topics = getattr(member, _TOPICS_ATTRIBUTE, None)
            if topics:
                handlers[name] = tuple(topics)
        cls.event_handlers = handlers
        limits = {"max_concurrency": cls.max_concurrency, **{
            f"concurrency_groups[{name!r}]": limit
            for name, limit in cls.concurrency_groups.items()
        }}  # fmt: skip
        for what, limit in limits.items():
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise TypeError(
                    f"{cls.__name__}.{what} must be a whole number of at least 1, got {limit!r}"
                )

    @property
    def ref(self) -> ActorRef:
        """This actor's own reference."""
        if self._ref is None:
            raise RuntimeError("this actor has not been spawned by a runtime")
        return self._ref

    @property
    def path(self) -> str:
        return self.ref.path

    @property
    def nursery(self) -> trio.Nursery:
        """This run's nursery (only with ``background_tasks = True``)."""
        if self._nursery is None:
            raise RuntimeError(
                f"{type(self).__name__}.nursery needs `background_tasks = True` on the class"
            )
        return self._nursery

    def subscriptions(self) -> tuple[str, ...]:
        """The topic patterns this actor receives (from its ``@on_event`` handlers)."""
        return tuple(dict.fromkeys(p for group in self.event_handlers.values() for p in group))

    @property
    def envelope(self) -> Envelope:
        """The envelope of the message being handled."""
        return current_envelope()

    def concurrency_group(self, message: Any) -> str | None:
        """The concurrency group that handles ``message`` (None: the default group, whose
        limit is ``max_concurrency``). Called only when the actor has groups."""
        return None

    def events_in_order(self, event: Event) -> bool:
        """Whether ``event`` waits for the actor's earlier events (True: bus events reach
        an actor one at a time, in publish order). An actor with ``max_concurrency``
        above 1 may answer False for events it handles side by side, like direct
        messages, in their concurrency group."""
        return True

    async def on_start(self) -> None:
        """Called before the first message of each run."""

    async def on_stop(self) -> None:
        """Called after the last message of each run, under a shielded deadline."""

    async def receive(self, message: Any) -> Any:
        """Handle a direct message; the return value answers an ask."""
        raise TypeError(f"{type(self).__name__} got a message but does not override receive()")

    async def liveness(self) -> bool:
        """Is this actor alive? Runs in the actor's task between two messages."""
        return True

    async def readiness(self) -> bool:
        """Should this actor receive messages now?"""
        return True

    async def _dispatch_event(self, event: Event) -> None:
        from ._bus import topic_matches

        for name, patterns in self.event_handlers.items():
            if any(topic_matches(pattern, event.topic) for pattern in patterns):
                await getattr(self, name)(event)


class ActorRef:
    """A handle on an actor by path; it stays valid across the actor's restarts."""

    __slots__ = ("_router", "_runtime", "path")

    def __init__(self, runtime: Runtime, path: str) -> None:
        self._runtime = runtime
        self._router = runtime.router
        self.path = path

    def __repr__(self) -> str:
        return f"<ActorRef {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def tell(
        self,
        message: Any,
        *,
        source: Source = Source.ACTOR,
        correlation_id: str | None = None,
        timeout: float = math.inf,
    ) -> None:
        """Deliver ``message`` without waiting for it to be handled.

        Raises:
            ActorError: the router refused it (the subclass says why).
        """
        self._router.tell(self.path, message, source, correlation_id, timeout)

    def send(
        self,
        message: Any,
        *,
        source: Source = Source.ACTOR,
        correlation_id: str | None = None,
        timeout: float = math.inf,
    ) -> Coroutine[Any, Any, None]:
        """Like ``tell``, but waits for room in a BLOCK mailbox (until ``timeout``); a
        coroutine, to await."""
        # The router's coroutine itself, not one wrapped in another: one frame less on
        # every message's way.
        return self._router.send(self.path, message, source, correlation_id, timeout)

    def ask(
        self,
        message: Any,
        *,
        timeout: float = 5.0,
        source: Source = Source.ACTOR,
        correlation_id: str | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Send ``message`` and wait for the handler's return value (a coroutine, to
        await).

        Raises:
            AskTimeout: no reply within ``timeout`` seconds.
            HandlerFailed: the handler raised (its exception is chained).
            ActorError: the router refused the message (the subclass says why).
        """
        return self._router.ask(self.path, message, timeout, source, correlation_id)
