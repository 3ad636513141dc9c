"""The runtime: a root supervisor, subtrees of supervisors, actor cells, the router and
the event bus, composed and owned by ``open_runtime()``.

Over 500 lines on purpose: it is one class, the runtime's public methods (spawn, stop,
lookup, ask, the snapshot, wait_ready, publish) and the subtree bookkeeping they share;
split, a reader would chase one object's state across files.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from supervision import (
    Backoff,
    ChildSpec,
    ChildState,
    OnExhausted,
    ProbeStatus,
    Restart,
    Strategy,
    SupervisionError,
    Supervisor,
    open_supervisor,
)

from ._actor import Actor, ActorRef
from ._bus import Event, EventBus
from ._cell import ActorCell, HealthProbe
from ._deadletters import DeadLetter, DeadLetterLog
from ._durable import EventStore, SQLiteEventStore
from ._envelope import Envelope, Source, next_id
from ._exceptions import ActorError, ActorNotFound, ActorStopped
from ._hooks import RuntimeHooks
from ._mailbox import Mailbox, MailboxConfig, MailboxStatistics
from ._ratelimit import RateLimit, TokenBucket
from ._router import Router

if TYPE_CHECKING:
    from ..faults import FaultInjector

_DEFAULT_MAILBOX = MailboxConfig()  # frozen: one for every actor that takes the default
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
DEAD_LETTER_TOPIC = "system.dead_letter"


@attrs.frozen
class RuntimeConfig:
    """Settings of a runtime; the defaults are the embedded defaults of the daemon.

    Args:
        max_restarts, period: the root supervisor's intensity.
        dead_letter_capacity: dead letters kept for ``dead_letters()``.
        dead_letter_events: the rate at which dead letters are also published on
            ``system.dead_letter`` (beyond it they are only logged).
        seed: seeds the backoff jitter of every supervisor, for reproducible runs.
        fault_seed: seeds the random source of every injected fault (``runtime.faults``),
            so that the same injections fire the same way; None picks a seed.
        state_path, durable_topics: see below.
    """

    max_restarts: int = 10
    period: float = 60.0
    dead_letter_capacity: int = 10_000
    dead_letter_events: RateLimit = attrs.field(factory=lambda: RateLimit(100, 100))
    seed: int | None = None
    fault_seed: int | None = None
    state_path: str | None = None
    """The SQLite file of durable events (created with mode 0600); None: no durable topics."""
    durable_topics: tuple[str, ...] = ()
    """Topic patterns declared durable when the runtime opens."""
    event_history: int = 1000
    """Non-durable events the bus keeps in memory for readers that reconnect
    (``EventBus.history``); durable ones are in the event store."""


@attrs.frozen
class ActorSnapshot:
    """One node of ``Runtime.actors()``: an actor, or a supervisor with children."""

    path: str
    kind: str
    """``"actor"`` or ``"supervisor"``."""
    state: str
    ready: bool
    restarts: int
    last_exit: str | None
    probes: tuple[ProbeStatus, ...]
    mailbox: MailboxStatistics | None
    children: tuple[ActorSnapshot, ...]
    last_restart_at: float | None = None
    """``trio.current_time()`` of its latest restart by its supervisor, or None."""
    handling: int = 0
    """Messages its handlers are working on now (at most its concurrency)."""
    max_concurrency: int = 1
    """How many messages it handles at once in its current run (its default group)."""

    def find(self, path: str) -> ActorSnapshot:
        """The node at ``path`` in this tree.

        Raises:
            KeyError: no such node.
        """
        if self.path == path:
            return self
        for child in self.children:
            if path == child.path or path.startswith(child.path.rstrip("/") + "/"):
                return child.find(path)
        raise KeyError(path)


@attrs.frozen
class RoutingStatistics:
    """What the router counted, by actor path: ``Runtime.routing_statistics()``."""

    routed: Mapping[str, int]
    """Messages admitted to each actor that runs now."""
    rejected: Mapping[tuple[str, str], int]
    """Messages refused, by (path, reason code: ``rate_limited``, ``not_ready``...)."""
    late: Mapping[str, int]
    """Asks handled after their asker had given up (it timed out)."""


@attrs.define(eq=False)
class _Subtree:
    """A supervisor in the tree; it remembers its children so that a restart of the
    subtree starts them all again."""

    path: str
    specs: dict[str, ChildSpec] = attrs.field(factory=dict)
    supervisor: Supervisor | None = None
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    period: float = 5.0
    rng: random.Random | None = None

    async def run(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_supervisor(
            strategy=self.strategy,
            max_restarts=self.max_restarts,
            period=self.period,
            name=self.path,
            rng=self.rng,
        ) as supervisor:
            self.supervisor = supervisor
            try:
                for spec in list(self.specs.values()):
                    await supervisor.start_child(spec)
                task_status.started(supervisor)
                await trio.sleep_forever()
            finally:
                self.supervisor = None


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


@attrs.define(eq=False)
class Runtime:
    """The actor system. Open it with :func:`open_runtime`.

    ``faults`` is its :class:`FaultInjector`: inject crashes, hangs, latency, drops and
    process kills into its actors (see :mod:`cws_actors.faults`).
    """

    config: RuntimeConfig
    _root: _Subtree
    _rng: random.Random
    _store: EventStore | None = None
    router: Router = attrs.field(init=False)
    bus: EventBus = attrs.field(init=False)
    faults: FaultInjector = attrs.field(init=False)
    _hooks: RuntimeHooks = attrs.field(init=False)
    _subtrees: dict[str, _Subtree] = attrs.field(factory=dict, init=False)
    _dead_letter_bucket: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._subtrees["/"] = self._root
        self.router = Router(
            dead_letters=DeadLetterLog(self.config.dead_letter_capacity),
            on_dead_letter=self._publish_dead_letter,
        )
        self.bus = EventBus(
            self.router.deliver_event, self._drop_event, store=self._store,
            history_size=self.config.event_history,
        )  # fmt: skip
        for pattern in self.config.durable_topics:
            self.bus.declare_durable(pattern)
        limit = self.config.dead_letter_events
        self._dead_letter_bucket = TokenBucket(limit.rate, limit.burst)
        # The core's one arrow up, taken at run time: ``runtime.faults`` is public API.
        # The runtime talks to the injector only as its hooks; the cells not at all.
        from ..faults import FaultInjector

        self.faults = FaultInjector(seed=self.config.fault_seed)
        self._hooks = self.faults
        self._hooks.bind(self.router.cells)

    # ----------------------------------------------------------------- spawning

    async def spawn(
        self,
        factory: Callable[[], Actor],
        *,
        name: str,
        parent: str = "/",
        restart: Restart = Restart.PERMANENT,
        mailbox: MailboxConfig | None = None,
        rate_limit: RateLimit | None = None,
        probes: Sequence[HealthProbe] = (),
        backoff: Backoff | None = None,
        shutdown: float = 5.0,
        on_exhausted: OnExhausted = OnExhausted.QUARANTINE,
        max_concurrency: int | None = None,
    ) -> ActorRef:
        """Start an actor at ``parent/name`` and wait until its ``on_start`` returned.

        ``factory`` makes a fresh Actor for every run (a class works). By default a
        crash-looping actor is quarantined, so it cannot take its siblings down.
        ``max_concurrency`` (default: the actor class's, 1 unless it says otherwise) is
        how many messages it handles at once; see ``Actor.max_concurrency``.

        Raises:
            ValueError: a bad name, an unknown parent or a path already in use.
            ChildStartFailed: the factory or ``on_start`` raised.
        """
        if not callable(factory):
            raise TypeError(f"spawn() needs a factory returning an Actor, got {factory!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
        if max_concurrency is not None and (
            not isinstance(max_concurrency, int)
            or isinstance(max_concurrency, bool)
            or max_concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be a whole number of at least 1, got {max_concurrency!r}"
            )
        node, path = self._new_path(parent, name)
        cell = ActorCell(
            path=path,
            name=name,
            node=node,
            factory=factory,
            mailbox=Mailbox(mailbox if mailbox is not None else _DEFAULT_MAILBOX),
            rate_limit=rate_limit,
            shutdown=shutdown,
            ref=ActorRef(self, path),
            router=self.router,
            store=self._store,
            listener=self._hooks,
            max_concurrency=max_concurrency,
        )
        spec = ChildSpec(
            name,
            cell.run,
            restart=restart,
            shutdown=shutdown,
            backoff=backoff,
            probes=[cell.supervision_probe(p) for p in probes],
            on_exhausted=on_exhausted,
        )
        self._hooks.attach(cell)  # before its start: a slow_start fault applies to it
        try:
            await self._start_child(node, spec)
        finally:
            self._hooks.settle(cell)
        self.router.cells[path] = cell
        self.router.tombstones.pop(path, None)
        topics = cell.actor.subscriptions() if cell.actor is not None else ()
        if topics:
            self.bus.subscribe_actor(path, topics)
        return cell.ref

    async def spawn_supervisor(
        self,
        name: str,
        *,
        parent: str = "/",
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        restart: Restart = Restart.PERMANENT,
        on_exhausted: OnExhausted = OnExhausted.QUARANTINE,
    ) -> str:
        """Add a subtree: a supervisor at ``parent/name`` that actors can be spawned
        under. Return its path."""
        node, path = self._new_path(parent, name)
        subtree = _Subtree(path, strategy=strategy, max_restarts=max_restarts, period=period,
                           rng=self._rng)  # fmt: skip
        spec = ChildSpec(name, subtree.run, restart=restart, shutdown=float("inf"),
                         on_exhausted=on_exhausted)  # fmt: skip
        self._subtrees[path] = subtree
        try:
            await self._start_child(node, spec)
        except BaseException:
            del self._subtrees[path]
            raise
        return path

    async def _start_child(self, node: _Subtree, spec: ChildSpec) -> None:
        supervisor = node.supervisor
        if supervisor is None:
            raise ActorStopped(node.path)
        node.specs[spec.id] = spec
        try:
            await supervisor.start_child(spec)
        except BaseException:
            node.specs.pop(spec.id, None)
            raise

    def _new_path(self, parent: str, name: str) -> tuple[_Subtree, str]:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"actor name must be letters, digits, '_', '-' or '.', not starting with"
                f" '-' or '.', got {name!r}"
            )
        node = self._subtrees.get(parent)
        if node is None:
            raise ValueError(
                f"parent {parent!r} is not a supervisor; create it with spawn_supervisor()"
            )
        path = _join(parent, name)
        if path in self.router.cells or path in self._subtrees:
            raise ValueError(f"{path!r} is already in use; stop() it first")
        return node, path

    # ----------------------------------------------------------------- lookups

    def _parent_of(self, path: str) -> tuple[Supervisor, str]:
        parent_path, _, name = path.rpartition("/")
        node = self._subtrees.get(parent_path or "/")
        known = path in self.router.cells or path in self._subtrees
        if not known or node is None or node.supervisor is None or path == "/":
            raise ActorNotFound(path)
        return node.supervisor, name

    async def restart(self, path: str) -> None:
        """Restart the actor or subtree at ``path`` now: an operator's restart, which
        does not count toward restart intensity.

        Raises:
            ActorNotFound: nothing at ``path``.
            ActorError: it is quarantined (use ``clear_quarantine``), or failed to start.
        """
        supervisor, name = self._parent_of(path)
        try:
            await supervisor.restart_child(name)
        except SupervisionError as exc:
            raise ActorError(f"{path}: {exc}") from exc

    async def clear_quarantine(self, path: str) -> None:
        """Start a quarantined actor again with a fresh restart budget.

        Raises:
            ActorNotFound: nothing at ``path``.
            ActorError: it is not quarantined.
        """
        supervisor, name = self._parent_of(path)
        try:
            await supervisor.clear_quarantine(name)
        except (SupervisionError, ValueError) as exc:
            raise ActorError(f"{path}: {exc}") from exc

    async def wait_ready(self, path: str) -> None:
        """Wait until the actor at ``path`` runs and its readiness probe passes (put a
        deadline on it with ``trio.move_on_after``).

        Raises:
            ActorNotFound: no actor there.
            ChildQuarantined: it will not become ready without ``clear_quarantine``.
        """
        parent_path, _, name = path.rpartition("/")
        node = self._subtrees.get(parent_path or "/")
        if path not in self.router.cells or node is None or node.supervisor is None:
            raise ActorNotFound(path)
        await node.supervisor.wait_ready(name)

    def lookup(self, path: str) -> ActorRef:
        """The reference of the actor at ``path``.

        Raises:
            ActorNotFound: no actor there.
        """
        cell = self.router.cells.get(path)
        if cell is None:
            raise ActorNotFound(path)
        return cell.ref

    async def stop(self, path: str, *, finish_handler: bool = True) -> None:
        """Stop the actor or subtree at ``path`` for good: the handler in flight may
        finish within the actor's shutdown time (unless ``finish_handler`` is False: then
        it is cancelled at once); queued asks get ActorStopped and queued tells become
        dead letters (``stopped``).

        Raises:
            ActorNotFound: nothing at ``path``.
        """
        if path == "/":
            raise ValueError("the root cannot be stopped; close the runtime instead")
        cells = [c for p, c in self.router.cells.items() if p == path or p.startswith(path + "/")]
        subtree = self._subtrees.get(path)
        if not cells and subtree is None:
            raise ActorNotFound(path)
        parent_path, _, name = path.rpartition("/")
        parent = self._subtrees[parent_path or "/"]
        for cell in cells:
            cell.stopped = True
            self.bus.unsubscribe_actor(cell.path)
        if subtree is None and cells and parent.supervisor is not None:
            state, _ = parent.supervisor.child_status(name)
            if finish_handler and state is ChildState.RUNNING:  # let it finish first
                await cells[0].park(cells[0].shutdown)
        parent.specs.pop(name, None)
        if parent.supervisor is not None:
            with contextlib.suppress(LookupError):
                await parent.supervisor.remove_child(name)
        for cell in cells:
            self.router.bury(cell.path)
            self._drain(cell)
        for sub in [p for p in self._subtrees if p == path or p.startswith(path + "/")]:
            del self._subtrees[sub]

    def _drain(self, cell: ActorCell) -> None:
        for envelope in cell.mailbox.drain():
            if envelope.control:
                continue
            if envelope.reply is not None:
                envelope.reply.set_error(ActorStopped(cell.path))
            self.router.dead_letter(envelope, "stopped", "actor stopped with this queued")
        cell.in_flight = 0

    def routing_statistics(self) -> RoutingStatistics:
        """A frozen snapshot of the router's counts (for metrics)."""
        router = self.router
        return RoutingStatistics(
            routed={path: cell.routed for path, cell in router.cells.items()},
            rejected=dict(router.rejected),
            late=dict(router.late),
        )

    def actors(self) -> ActorSnapshot:
        """A snapshot of the whole tree, from the root supervisor down."""
        return self._snapshot_subtree(self._root, "running", True, 0, None, ())

    def _snapshot_subtree(
        self,
        node: _Subtree,
        state: str,
        ready: bool,
        restarts: int,
        last_exit: str | None,
        probes: tuple[ProbeStatus, ...],
    ) -> ActorSnapshot:
        children = []
        if node.supervisor is not None:
            for child in node.supervisor.statistics().children:
                path = _join(node.path, child.id)
                exit_text = str(child.last_exit) if child.last_exit is not None else None
                subtree = self._subtrees.get(path)
                if subtree is not None:
                    snapshot = self._snapshot_subtree(
                        subtree,
                        child.state.value,
                        child.ready,
                        child.restarts,
                        exit_text,
                        child.probes,
                    )
                    children.append(attrs.evolve(snapshot, last_restart_at=child.last_restart_at))
                    continue
                cell = self.router.cells.get(path)
                children.append(
                    ActorSnapshot(
                        path=path,
                        kind="actor",
                        state=child.state.value,
                        ready=child.ready and child.state is ChildState.RUNNING,
                        restarts=child.restarts,
                        last_exit=exit_text,
                        probes=child.probes,
                        mailbox=cell.mailbox.statistics() if cell is not None else None,
                        handling=cell.handling if cell is not None else 0,
                        max_concurrency=cell.concurrency if cell is not None else 1,
                        children=(),
                        last_restart_at=child.last_restart_at,
                    )
                )
        return ActorSnapshot(
            path=node.path,
            kind="supervisor",
            state=state,
            ready=ready,
            restarts=restarts,
            last_exit=last_exit,
            probes=probes,
            mailbox=None,
            children=tuple(children),
        )

    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The latest dead letters, oldest first."""
        return self.router.dead_letters.entries()

    def publish_nowait(
        self, topic: str, payload: Any = None, *, source: str | None = None
    ) -> Event:
        """Publish an event without waiting (see :meth:`EventBus.publish_nowait`)."""
        return self.bus.publish_nowait(topic, payload, source=source)

    async def publish(self, topic: str, payload: Any = None, *, source: str | None = None) -> Event:
        """Publish an event; a durable one is stored first (see :meth:`EventBus.publish`)."""
        return await self.bus.publish(topic, payload, source=source)

    # ----------------------------------------------------------------- dead letters

    def _drop_event(self, event: Event, reason: str) -> None:
        envelope = Envelope(next_id(), Source.BUS, "<subscription>", event)
        self.router.dead_letter(envelope, "mailbox_full", reason)

    def _publish_dead_letter(self, letter: DeadLetter) -> None:
        payload = letter.envelope.payload
        if isinstance(payload, Event) and payload.topic == DEAD_LETTER_TOPIC:
            return  # a dead letter about a dead letter is only logged
        if self._dead_letter_bucket.take() == 0.0:
            self.bus.publish_nowait(DEAD_LETTER_TOPIC, letter.as_dict(), source="router")


@contextlib.asynccontextmanager
async def open_runtime(*, config: RuntimeConfig | None = None) -> AsyncIterator[Runtime]:
    """Open an actor runtime: a root supervisor (one_for_one) with the router and the
    event bus. When the block ends, every actor is stopped in reverse order."""
    config = config if config is not None else RuntimeConfig()
    rng = random.Random(config.seed)
    store = await SQLiteEventStore.open(config.state_path) if config.state_path else None
    try:
        async with open_supervisor(
            strategy=Strategy.ONE_FOR_ONE,
            max_restarts=config.max_restarts,
            period=config.period,
            name="/",
            rng=rng,
        ) as root_supervisor:
            root = _Subtree("/", supervisor=root_supervisor)
            runtime = Runtime(config, root, rng, store)
            # The ask timers run in a system task rather than in a nursery around the
            # body, so that an exception of the body comes out of `async with` as itself.
            timers_scope = trio.CancelScope()

            async def run_timers() -> None:
                with timers_scope:
                    await runtime.router.timers.run()

            trio.lowlevel.spawn_system_task(
                run_timers, name="cws_actors ask timers", context=contextvars.copy_context()
            )
            try:
                yield runtime
            finally:
                timers_scope.cancel()
    finally:
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()
