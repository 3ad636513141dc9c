"""Serving the daemon: ``serve_daemon(config)`` holds the home, binds the socket, opens
the daemon (:mod:`api._daemon`), serves its app (:mod:`api._http`) with hypercorn's Trio
worker, handles SIGTERM/SIGINT (graceful stop) and SIGHUP (reload and rescan), and speaks
the systemd notify protocol when ``NOTIFY_SOCKET`` is set.

Start-up order: hold the home (one daemon per home), bind the socket (a port in use is
a clear error before anything else starts), open the runtime and the host, serve and
print the URL, then load the plugins in the background: ``/healthz`` answers at once,
and ``/readyz`` answers 503 naming the plugins still loading until they are up.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from cws_actors import not_dumpable

from ._config import DaemonConfig
from ._connections import BodyIntake, OpenConnections, default_max_connections, serve_http
from ._daemon import Daemon, open_daemon, poll_providers
from ._home_lock import hold_home
from ._http import create_app
from ._logging import ACCESS_LOGGER

log = logging.getLogger("cws.daemon")


class AddressInUse(Exception):
    """Raised when the daemon's address is taken by another process."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (as hypercorn would bind it).

    Raises:
        AddressInUse: the port is taken.
        OSError: any other reason the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(
                f"{host}:{port} is already in use: stop the other daemon (or program) that"
                " listens there, or choose another port (--port, CWS_PORT; --port 0 picks a"
                " free one)"
            ) from None
        raise
    return sock


async def serve_daemon(
    config: DaemonConfig,
    *,
    config_path: Path | None = None,
    on_url: Callable[[str], None] = print,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM or SIGINT (or cancellation), then stop gracefully.

    ``task_status.started(daemon)`` comes once it serves, before the plugins have loaded:
    await ``daemon.plugins_loaded`` for them.

    Raises:
        HomeInUse: another daemon serves ``config.home``.
        AddressInUse: the port is taken.
    """
    not_dumpable()  # no same-user process reads our environment or memory in /proc
    with hold_home(config.home) as home_lock:
        listener = bind_listener(config.host, config.port)
        try:
            await _serve(config, config_path, on_url, listener, home_lock, task_status)
        finally:
            if listener.fileno() >= 0:
                listener.close()  # serving never started


async def _serve(
    config: DaemonConfig,
    config_path: Path | None,
    on_url: Callable[[str], None],
    listener: socket.socket,
    home_lock: Any,
    task_status: trio.TaskStatus[Daemon],
) -> None:
    async with open_daemon(config, config_path=config_path) as daemon:
        daemon.host.protected_ports = (listener.getsockname()[1],)  # out of plugins' reach
        app = create_app(daemon)  # first: it guards the core routes from plugins
        hyper = HypercornConfig()
        hyper.graceful_timeout = config.shutdown_grace
        hyper.keep_alive_timeout = config.keep_alive_seconds
        hyper.accesslog = logging.getLogger(ACCESS_LOGGER) if config.access_log else None
        hyper.errorlog = logging.getLogger("cws.http")
        hyper.include_server_header = False
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(_signals, daemon, stop)  # handlers in place before serving
            connections = OpenConnections(config.max_connections or default_max_connections())
            daemon.connections = connections
            intake = BodyIntake(config.max_body_rate) if config.max_body_rate else None
            daemon.body_intake = intake
            binds: list[str] = await nursery.start(
                functools.partial(serve_http, app, hyper, listener, connections,
                                  intake=intake, shutdown_trigger=stop.wait)
            )  # fmt: skip
            url = binds[0].replace("0.0.0.0", "127.0.0.1")
            daemon.serving(url)
            home_lock.announce(url)
            on_url(url)
            nursery.start_soon(_systemd, daemon, stop)

            async def load_then_poll() -> None:
                await daemon.load_plugins()
                await poll_providers(daemon, config.instance_poll_interval, stop)

            nursery.start_soon(load_then_poll)
            daemon.background = nursery
            task_status.started(daemon)
            await stop.wait()
            daemon.stopping = True
            for scope in daemon.chaos_scopes:
                scope.cancel()  # a chaos run clears its faults as it ends
            log.info("stopping: finishing requests in flight, then stopping actors")
        # The app has stopped accepting and drained; the context managers now stop
        # plugins and actors in reverse order.


async def _signals(
    daemon: Daemon, stop: trio.Event, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    results = await daemon.reload()
                    log.info("reloaded: %s", results)
                except Exception as exc:  # noqa: BLE001 - a bad reload must not stop the daemon
                    log.error("reload failed, the previous configuration stays: %s", exc)
                continue
            stop.set()
            return


async def _systemd(daemon: Daemon, stop: trio.Event) -> None:
    """READY=1 once serving, WATCHDOG=1 at half the watchdog interval, STOPPING=1."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(address)
        await sock.send(f"READY=1\nSTATUS=serving {daemon.url}\nMAINPID={os.getpid()}".encode())
        interval = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
        with trio.CancelScope() as scope:
            if interval <= 0:
                await stop.wait()
            else:
                while not stop.is_set():
                    with trio.move_on_after(interval / 2):
                        await stop.wait()
                    if daemon.ready or stop.is_set():
                        await sock.send(b"WATCHDOG=1")
            scope.cancel()
        with contextlib.suppress(OSError):
            await sock.send(b"STOPPING=1")
