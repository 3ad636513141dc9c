"""The HTTP connections the daemon holds: keep-alive honoured, ``Connection: close``
honoured, and a cap on how many are open, the oldest idle ones closed first.

The upstream bug (hypercorn 0.18 with quart-trio 0.12, HTTP/1.1; README, "Known
issues"): hypercorn finishes a response from inside the app's own ``send()`` call. The
last ``send`` of a response runs ``H11Protocol._maybe_recycle``, which first hands the
app an ``http.disconnect`` message, then either restarts the connection's idle timer
(``TrioSingleTask.restart``, a ``trio.Lock`` and a ``nursery.start``) or closes the
connection (``TCPServer._close``: ``send_eof``, ``aclose``). quart-trio's request task
and its message task share a nursery, and the message task cancels that nursery as soon
as it reads ``http.disconnect``. So the rest of hypercorn's work in that ``send`` runs
in a cancelled scope: the lock's checkpoint raises ``Cancelled`` before the timer
starts, or the timer task, started from a cancelled scope, is left there by
``TaskStatus.started()`` and dies at its first checkpoint; ``send_eof``'s checkpoint
raises before the socket is shut or closed. With no timer and no close, the connection
waits in ``receive_some`` for ever (hypercorn's ``read_timeout`` is off by default, and
it would cut the event stream). Kept-alive connections, ``Connection: close`` and
responses sent before a request's body arrived all leak their socket.

The workaround here, without patching hypercorn:

* :class:`ConnectionGuard`, an ASGI middleware, runs the app's ``send`` calls under a
  shielded cancel scope, so hypercorn's end-of-response work completes. (hypercorn
  already shields the socket write itself, so a shield adds no new way to block.)
* :func:`serve_http` is hypercorn's ``worker_serve`` for one plain-HTTP socket whose
  listener counts connections (:class:`OpenConnections`): at ``max_connections`` the
  connection idle the longest is closed before the next one is accepted, so a flood of
  idle connections cannot take the descriptors ``accept`` needs.

Request bodies (issue 16, item 3): hypercorn reads a connection as fast as the client
sends and hands every chunk to the app, whether or not the app will read the body, and
every chunk costs the event loop a pass through hypercorn, h11 and quart. Two bounds keep
a client's bulk body from taking the loop from everyone else:

* a body is read from the socket only once the app asks for it (:data:`WANT_BODY`):
  until then the bytes wait in the kernel, where TCP holds the client back, so a request
  refused before its body is read (a 401 to an anonymous 99 MiB POST) costs the loop its
  head and at most one read, not the megabytes the client had sent meanwhile;
* the bodies the app reads are taken in at most ``[daemon] max_body_rate`` bytes a
  second, all connections together (:class:`BodyIntake`), a fair share in turn.

It uses hypercorn's ``TCPServer``, ``Lifespan`` and ``WorkerContext`` as 0.18 defines
them; :func:`check_hypercorn` logs a warning at start on a newer hypercorn, which may have
fixed the bug (re-run the reproduction in the README) or changed those classes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.metadata
import logging
import math
import resource
import socket
import sys
import termios
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

log = logging.getLogger("cws.http")

WRITTEN_FOR = (0, 18)
"""The hypercorn release this module was written against (its bug, its classes)."""
_Peer = tuple[Any, ...]
_ASGI = Callable[..., Awaitable[None]]


def check_hypercorn(version: str | None = None) -> str | None:
    """A warning when the installed hypercorn is newer than :data:`WRITTEN_FOR`, else None."""
    version = version or importlib.metadata.version("hypercorn")
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if numbers <= WRITTEN_FOR:
        return None
    return (
        f"hypercorn {version} is newer than 0.18, which api/_connections.py works around"
        " (idle connections never closed): check whether the README's reproduction still"
        " fails, and that its TCPServer, Lifespan and WorkerContext are unchanged"
    )


def default_max_connections(open_files: int | None = None) -> int:
    """The cap on open connections when ``[daemon] max_connections`` is 0: the soft
    RLIMIT_NOFILE less an eighth (at least 64) for the daemon's own files, databases,
    plugin pipes and subprocesses. 1,024 descriptors (systemd's default) give 896."""
    if open_files is None:
        open_files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if open_files == resource.RLIM_INFINITY or open_files <= 0:
        open_files = 65536
    return max(16, open_files - max(64, open_files // 8))


@attrs.frozen
class ConnectionStatistics:
    """A snapshot of :class:`OpenConnections`."""

    open: int
    idle: int
    limit: int
    evicted: int
    """Idle connections closed so far to make room for new ones."""
    received: int = 0
    """Bytes read from clients so far (heads and bodies)."""


@attrs.define(eq=False)
class _Body:
    """The body of the request in flight on a connection."""

    declared: bool
    """The request has one (a ``Content-Length`` above 0, or ``Transfer-Encoding``)."""
    wanted: bool = False
    """The app asked for it: it is read as it streams in, within the intake bound.
    Until then it stays in the socket, also once the app has answered without it: the
    connection is closed after that answer (hypercorn does not read past a body)."""

    @property
    def held(self) -> bool:
        """Left in the socket for now: declared, not asked for."""
        return self.declared and not self.wanted


@attrs.define(eq=False)
class _Connection:
    stream: trio.SocketStream
    peer: _Peer
    requests: int = 0
    """Requests in flight (an ASGI app call that has not returned)."""
    body: _Body | None = None
    """The body of the latest request started on it (None: no request in flight)."""
    changed: trio.Event = attrs.field(factory=trio.Event)
    """Set when :attr:`body` changes (or the connection closes), then replaced."""

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@attrs.define(eq=False)
class OpenConnections:
    """The connections being served, in the order they became idle.

    A connection is idle from its accept, and from the end of each request until the
    next one starts (:class:`ConnectionGuard` says which). When ``limit`` are open and
    another client connects, :meth:`make_room` closes the connection idle the longest
    before it is accepted; with none idle, the new one waits in the listen queue.
    """

    limit: int
    _open: dict[_Peer, _Connection] = attrs.field(factory=dict, init=False)
    _idle: dict[_Peer, _Connection] = attrs.field(factory=dict, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _evicted: int = attrs.field(default=0, init=False)
    received: int = attrs.field(default=0, init=False)
    """Bytes read from clients so far, every connection together."""
    _warned_at: float = attrs.field(default=-math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            len(self._open), len(self._idle), self.limit, self._evicted, self.received
        )

    @property
    def full(self) -> bool:
        return len(self._open) >= self.limit

    async def make_room(self) -> None:
        """Return once fewer than ``limit`` connections are open, closing idle ones."""
        while self.full:
            if not self._idle:
                self._changed = trio.Event()
                await self._changed.wait()
                continue
            oldest = next(iter(self._idle.values()))
            self._forget(oldest)
            self._evicted += 1
            self._warn_full()
            await oldest.stream.aclose()  # hypercorn's reader sees ClosedResourceError

    def opened(self, stream: trio.SocketStream, intake: BodyIntake | None = None) -> _TrackedStream:
        peer = _peer(stream.socket.getpeername())
        connection = _Connection(stream, peer)
        self._open[peer] = self._idle[peer] = connection
        return _TrackedStream(
            stream, connection, functools.partial(self._forget, connection), intake, self
        )

    def request_started(self, peer: _Peer | None, body: _Body | None = None) -> None:
        """A request began on ``peer``'s connection; ``body`` is its body's state, which
        the connection's reads follow (no body given: read as it comes)."""
        connection = self._open.get(_peer(peer)) if peer else None
        if connection is not None:
            connection.requests += 1
            self._idle.pop(connection.peer, None)
            connection.body = body
            connection.notify()

    def body_wanted(self, peer: _Peer | None) -> None:
        """The app reads the body of the request in flight on ``peer``'s connection."""
        connection = self._open.get(_peer(peer)) if peer else None
        if connection is not None:
            connection.notify()

    def request_ended(self, peer: _Peer | None, body: _Body | None = None) -> None:
        connection = self._open.get(_peer(peer)) if peer else None
        if connection is not None and connection.requests > 0:
            connection.requests -= 1
            if connection.body is body:  # not the next request's, started meanwhile
                connection.body = None
                connection.notify()
            if connection.requests == 0:
                self._idle[connection.peer] = connection  # the newest idle one
                self._changed.set()

    def _forget(self, connection: _Connection) -> None:
        connection.notify()  # a read waiting for its body to be wanted sees the close
        if self._open.get(connection.peer) is connection:
            del self._open[connection.peer]
            self._idle.pop(connection.peer, None)
            self._changed.set()

    def _warn_full(self) -> None:
        now = trio.current_time()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "%d connections open, the most allowed ([daemon] max_connections): closing"
                " the idle ones, oldest first (%d so far)", self.limit, self._evicted,
            )  # fmt: skip


WANT_BODY = "cws.want_body"
"""The scope key of the callable that says the app reads the request's body
(:class:`ConnectionGuard` sets it, ``api._http._bodies.BoundedBody`` calls it): until
then a declared body is left in the socket."""
HEAD_READ = 64 * 1024
"""Bytes a read takes when no body is being read (hypercorn's own figure): a request's
head, a small body that came with it, the end of a connection."""
BULK_READ = 1024 * 1024
"""Bytes a connection's read may take at once while the app reads a body."""
BULK_SIZE = 8 * 1024
"""A read at least this large means a body is streaming in: the next read waits
:data:`BULK_PAUSE` first, so that the bytes gather and are taken in one read."""
BULK_PAUSE = 0.002
"""Seconds a streaming connection waits before each read when bodies are read without
a bound (``max_body_rate = 0``; with one, :class:`BodyIntake`'s turns pace the reads).
Every chunk read costs the event loop a pass through hypercorn, h11 and quart, and every
other request waits behind those passes: reading what gathered every 2 ms takes the
same bytes in far fewer passes (about 20 KiB a read became 200 KiB here)."""
TURN = 512 * 1024
"""Bytes a connection reading a body takes in one turn of :class:`BodyIntake` (when that
many wait in its socket): at 64 MiB/s, one connection's turn comes every 8 ms. What a
read costs the event loop is mostly per read, a pass through hypercorn, h11 and quart
(a 100 MiB upload at 64 MiB/s took about 17% of the loop's core in 64 KiB turns, 8-12%
in 512 KiB turns); per byte it is a few copies."""
BODY_BUFFER = 2 * 1024 * 1024
"""The socket receive buffer (``SO_RCVBUF``, which Linux doubles) of a connection whose
body is read under :class:`BodyIntake`: room for a few turns, so that a turn finds its
bytes waiting (the kernel's own tuning sizes the buffer to how fast the connection was
read, which the bound holds back: reads 8 ms apart got 30 MiB/s, not 64)."""


def _peer(address: Any) -> _Peer:
    """``(host, port)``: how hypercorn's ``scope["client"]`` names a TCP peer."""
    return tuple(address[:2])


@attrs.define(eq=False)
class BodyIntake:
    """How many bytes of request bodies the daemon reads a second, all connections
    together (``[daemon] max_body_rate``): a token bucket of ``rate`` bytes a second that
    holds at most ``burst``, taken in turns (a ``trio.Lock`` is first come, first
    served: with N connections reading, each gets about 1/N), a turn waiting until
    ``turn`` bytes are there (or fewer, if fewer are waiting in the socket).

    A body read this way costs the event loop a bounded share of its time, whoever sends
    it and however many connections send at once; the bytes not yet taken wait in the
    sockets, and TCP holds the clients back."""

    rate: float
    turn: int = TURN
    burst: int = BULK_READ
    _tokens: float = attrs.field(init=False, default=0.0)
    _at: float | None = attrs.field(init=False, default=None)
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)
    taken: int = attrs.field(init=False, default=0)
    """Bytes read under this bound so far."""

    def __attrs_post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not 0 < self.turn <= self.burst:
            raise ValueError(f"turn must be in 1..burst ({self.burst}), got {self.turn}")

    async def take(self, waiting: int, most: int = BULK_READ) -> int:
        """Wait for this connection's turn and for ``turn`` bytes (``waiting``, the
        bytes in its socket, if fewer); take and return up to ``most`` of them (at
        least 1)."""
        async with self._lock:
            need = max(1, min(self.turn, waiting, most))
            short = need - self._refill()
            if short > 0:
                await trio.sleep(short / self.rate)
                self._refill()
            granted = max(need, min(int(self._tokens), most))  # need: whatever the rounding
            self._tokens -= granted
            return granted

    def give_back(self, unused: int) -> None:
        """What a read was granted and did not get (the socket had less)."""
        self._tokens = min(self.burst, self._tokens + unused)

    def _refill(self) -> float:
        now = trio.current_time()
        if self._at is None:
            self._tokens = self.burst
        else:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens


def _waiting(sock: Any) -> int:
    """Bytes waiting in a TCP socket's receive queue (0 if it cannot say)."""
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(answer, sys.byteorder)


class _TrackedStream(trio.abc.HalfCloseableStream):
    """A plain TCP stream that leaves :class:`OpenConnections` when it is closed, and
    reads a request's body only once the app wants it, within ``intake``.
    (No ``do_handshake``: hypercorn takes an AttributeError there to mean "not TLS".)"""

    def __init__(
        self,
        stream: trio.SocketStream,
        connection: _Connection,
        forget: Callable[[], None],
        intake: BodyIntake | None = None,
        counter: OpenConnections | None = None,
    ) -> None:
        self.transport_stream = stream
        self.socket = stream.socket
        self._connection = connection
        self._forget = forget
        self._intake = intake
        self._bulk = False
        self._sized = False
        self._counter = counter

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._receive()
        if self._counter is not None:
            self._counter.received += len(data)
        return data

    async def _receive(self) -> bytes | bytearray:
        connection = self._connection
        while connection.body is not None and connection.body.held and not self._closed:
            await connection.changed.wait()  # the app wants the body, or the request ends
        body = connection.body
        if body is None or not body.wanted or self._closed:
            self._bulk = False
            return await self.transport_stream.receive_some(HEAD_READ)
        if self._intake is None:
            if self._bulk:
                # A body is streaming in: let it gather, then take it in one read.
                await trio.sleep(BULK_PAUSE)
            data = await self.transport_stream.receive_some(BULK_READ)
            self._bulk = len(data) >= BULK_SIZE
            return data
        return await self._receive_within(self._intake)

    async def _receive_within(self, intake: BodyIntake) -> bytes | bytearray:
        """A body's next bytes, in this connection's turn of ``intake``."""
        if not self._sized:
            self._sized = True
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BODY_BUFFER)
        # A turn is taken once there is something to read, so that a connection waiting
        # for its client holds no tokens. (A socket closed meanwhile: the read below
        # raises ClosedResourceError, which hypercorn expects.)
        waiting = _waiting(self.socket) if not self._closed else 1
        if not waiting:
            await trio.lowlevel.wait_readable(self.socket)
            waiting = _waiting(self.socket) if not self._closed else 1
        granted = await intake.take(waiting)
        try:
            data = await self.transport_stream.receive_some(granted)
        except BaseException:
            intake.give_back(granted)
            raise
        intake.give_back(granted - len(data))
        intake.taken += len(data)
        return data

    @property
    def _closed(self) -> bool:
        return self.socket.fileno() < 0

    async def aclose(self) -> None:
        self._forget()
        await self.transport_stream.aclose()


@attrs.define(eq=False)
class _CappedListener(trio.abc.Listener[_TrackedStream]):
    listener: trio.SocketListener
    connections: OpenConnections
    intake: BodyIntake | None = None

    async def accept(self) -> _TrackedStream:
        if self.connections.full:
            await trio.lowlevel.wait_readable(self.listener.socket)  # someone knocks: then
            await self.connections.make_room()
        return self.connections.opened(await self.listener.accept(), self.intake)

    async def aclose(self) -> None:
        await self.listener.aclose()


@attrs.define(eq=False)
class ConnectionGuard:
    """ASGI middleware: the app's ``send`` runs shielded from the app's own cancellation
    (the upstream bug above), each HTTP request marks its connection busy, and a
    request's body stays in the socket until the app calls ``scope[WANT_BODY]()``."""

    app: _ASGI
    connections: OpenConnections

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(declared=_declares_body(scope["headers"]))
        connections = self.connections

        def want_body() -> None:
            if not body.wanted:
                body.wanted = True
                connections.body_wanted(scope.get("client"))

        async def shielded_send(message: dict[str, Any]) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        scope[WANT_BODY] = want_body
        connections.request_started(scope.get("client"), body)
        try:
            await self.app(scope, receive, shielded_send)
        finally:
            connections.request_ended(scope.get("client"), body)


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers announce a body (RFC 9112, 6.3)."""
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() != b"0"
    return False


async def serve_http(
    app: _ASGI,
    config: HypercornConfig,
    sock: socket.socket,
    connections: OpenConnections,
    *,
    intake: BodyIntake | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound TCP socket ``sock`` until ``shutdown_trigger`` returns,
    then let requests in flight finish within ``config.graceful_timeout``; the bodies
    the app reads are taken in within ``intake`` (None: as fast as they come).

    hypercorn's ``worker_serve`` (0.18) for one plain-HTTP socket, with the app behind
    :class:`ConnectionGuard` and the listener behind ``connections``. ``sock`` is closed
    when accepting stops, so a client is refused at once during the drain.
    """
    if warning := check_hypercorn():
        log.warning("%s", warning)
    guarded: Any = ConnectionGuard(app, connections)  # an ASGI app, typed loosely
    wrapped = wrap_app(guarded, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sock.listen(config.backlog)
            listener = _CappedListener(
                trio.SocketListener(trio.socket.from_stdlib_socket(sock)), connections, intake
            )
            url = f"http://{repr_socket_addr(sock.family, sock.getsockname())}"
            await config.log.info(f"Running on {url}")
            handler = functools.partial(
                TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())
            )
            task_status.started([url])
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        functools.partial(
                            trio.serve_listeners, handler, [listener],
                            handler_nursery=server_nursery,
                        )
                    )  # fmt: skip
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                sock.close()
                await context.terminated.set()  # idle connections close at once
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
