"""The daemon: the runtime, the plugin host and the HTTP app in one Trio run.

``open_daemon(config)`` composes them (used by tests and by ``cws daemon``);
``serve_daemon(config)`` also serves the app with hypercorn's Trio worker, handles
SIGTERM/SIGINT (graceful stop) and SIGHUP (reload and rescan), and speaks the systemd
notify protocol when ``NOTIFY_SOCKET`` is set.

Start-up order: hold the home (one daemon per home), bind the socket (a port in use is
a clear error before anything else starts), open the runtime and the host, serve and
print the URL, then load the plugins in the background: ``/healthz`` answers at once,
and ``/readyz`` answers 503 naming the plugins still loading until they are up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from cws_actors import (
    HostConfig,
    PluginHost,
    Runtime,
    RuntimeConfig,
    open_plugin_host,
    open_runtime,
)

from ._config import DaemonConfig, load_config
from ._home_lock import hold_home
from ._logging import ACCESS_LOGGER
from ._metrics import Metrics

log = logging.getLogger("cws.daemon")


@attrs.define(eq=False)
class Daemon:
    """What the HTTP app serves."""

    config: DaemonConfig
    runtime: Runtime
    host: PluginHost
    metrics: Metrics
    started_at: float = attrs.field(factory=time.time)
    url: str | None = None
    stopping: bool = False
    config_path: Path | None = None
    reloads: int = 0
    background: trio.Nursery | None = None
    """Where long requests (chaos runs) go on after their request has been answered."""
    chaos_runs: dict[str, Any] = attrs.field(factory=dict)
    """Chaos runs by id (``api._faults``), the latest last."""
    chaos_scopes: list[trio.CancelScope] = attrs.field(factory=list)
    plugins_loaded: trio.Event = attrs.field(factory=trio.Event)
    """Set once the first load of every enabled plugin has finished (loaded or refused)."""

    @property
    def ready(self) -> bool:
        return not self.waiting_for()

    def waiting_for(self) -> list[str]:
        """What ``/readyz`` waits for, in words; empty once ready."""
        if self.stopping:
            return ["the daemon is stopping"]
        if self.url is None:
            return ["the daemon is starting"]
        if not self.plugins_loaded.is_set():
            loading = self.host.loading
            if loading:
                return [f"plugin {name} loading" for name in loading]
            return ["plugins being discovered"]
        return []

    async def load_plugins(self) -> None:
        """Load every enabled plugin; a refused one is logged (by the host, at ERROR) and
        the others go on."""
        try:
            results = await self.host.load_all()
        finally:
            self.plugins_loaded.set()
        refused = sorted(name for name, problem in results.items() if problem is not None)
        log.info(
            "ready: %d plugins loaded%s", len(results) - len(refused),
            f", not loaded: {', '.join(refused)}" if refused else "",
            extra={"loaded": len(results) - len(refused), "not_loaded": refused},
        )  # fmt: skip

    async def reload(self) -> dict[str, str | None]:
        """SIGHUP: read the configuration again and rescan plugins. The plugin overrides
        and ``require_signed`` apply at once; the other settings (the socket, the home,
        the restart budget, the fork server...) wait for a restart, and the log says
        which changed."""
        if self.config_path is not None:
            fresh = load_config(self.config_path, host=self.config.host, port=self.config.port)
            waiting = sorted(
                field.name
                for field in attrs.fields(DaemonConfig)
                if field.name not in _RELOADED
                and getattr(fresh, field.name) != getattr(self.config, field.name)
            )
            if waiting:
                log.warning("reload: %s take effect at the next start", ", ".join(waiting))
            self.host.config = attrs.evolve(
                self.host.config,
                overrides=fresh.overrides,
                require_signed=fresh.require_signed,
            )
            self.config = attrs.evolve(fresh, home=self.config.home)
        results = await self.host.load_all()
        self.reloads += 1
        return results


_RELOADED = frozenset({"overrides", "require_signed", "source", "host", "port"})
"""Settings that SIGHUP applies (host and port are the running socket's, by design)."""


def host_config(config: DaemonConfig) -> HostConfig:
    return HostConfig(
        home=config.home,
        system_dir=config.system_dir,
        entry_points=config.entry_points,
        overrides=config.overrides,
        require_signed=config.require_signed,
        fork_server=config.fork_server,
        max_restarts=config.max_restarts,
        restart_period=config.restart_period,
    )


@contextlib.asynccontextmanager
async def open_daemon(
    config: DaemonConfig, *, config_path: Path | None = None
) -> AsyncIterator[Daemon]:
    """The runtime and the plugin host (no plugin loaded yet: see ``load_plugins``)."""
    config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    runtime_config = RuntimeConfig(
        state_path=str(config.home / "events.db"), durable_topics=config.durable_topics
    )
    async with (
        open_runtime(config=runtime_config) as runtime,
        open_plugin_host(runtime, host_config(config)) as host,
    ):
        yield Daemon(config, runtime, host, Metrics(runtime), config_path=config_path)


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
    with hold_home(config.home) as home_lock:
        listener = bind_listener(config.host, config.port)
        try:
            await _serve(config, config_path, on_url, listener, home_lock, task_status)
        finally:
            if listener.fileno() >= 0:
                listener.close()  # hypercorn never took it


async def _serve(
    config: DaemonConfig,
    config_path: Path | None,
    on_url: Callable[[str], None],
    listener: socket.socket,
    home_lock: Any,
    task_status: trio.TaskStatus[Daemon],
) -> None:
    from ._app import create_app
    from ._instances import poll_providers

    async with open_daemon(config, config_path=config_path) as daemon:
        app = create_app(daemon)  # first: it guards the core routes from plugins
        hyper = HypercornConfig()
        hyper.bind = [f"fd://{listener.detach()}"]  # hypercorn owns it from here on
        hyper.graceful_timeout = config.shutdown_grace
        hyper.accesslog = logging.getLogger(ACCESS_LOGGER) if config.access_log else None
        hyper.errorlog = logging.getLogger("cws.http")
        hyper.include_server_header = False
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(_signals, daemon, stop)  # handlers in place before serving
            binds: list[str] = await nursery.start(_serve_until, app, hyper, stop)
            daemon.url = binds[0].replace("0.0.0.0", "127.0.0.1")
            home_lock.announce(daemon.url)
            on_url(daemon.url)
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


async def _serve_until(
    app: Any, hyper: HypercornConfig, stop: trio.Event, task_status: trio.TaskStatus[list[str]]
) -> None:
    await serve(app, hyper, shutdown_trigger=stop.wait, task_status=task_status)


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
