"""The daemon: the runtime and the plugin host composed, and what its faces reach
through it (the configuration, the metrics, the chaos runs, the readiness in words).

``open_daemon(config)`` composes them (used by tests and, through
:func:`api._serve.serve_daemon`, by ``cws daemon``); :func:`poll_providers` is the
daemon's own background work on its cloud providers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from cws_actors import (
    ActorError,
    HostConfig,
    PluginError,
    PluginHost,
    Runtime,
    RuntimeConfig,
    open_plugin_host,
    open_runtime,
)

from ._auth import PluginTokens
from ._config import FOR_HOST, DaemonConfig, load_config
from ._metrics import Metrics

if TYPE_CHECKING:
    from ._connections import BodyIntake, OpenConnections

log = logging.getLogger("cws.daemon")

SERVICE_TYPE = "cloud-provider"
"""The service type a cloud-provider plugin declares; its name is the provider's name in
``/api/v1/instances`` (``aws``, ``gcp``)."""


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
    connections: OpenConnections | None = None
    """The HTTP connections being served (``statistics()``), once serving."""
    body_intake: BodyIntake | None = None
    """The bound on request bodies read a second (``[daemon] max_body_rate``)."""
    background: trio.Nursery | None = None
    """Where long requests (chaos runs) go on after their request has been answered."""
    chaos_runs: dict[str, Any] = attrs.field(factory=dict)
    """Chaos runs by id (``api._http._faults``), the latest last."""
    chaos_scopes: list[trio.CancelScope] = attrs.field(factory=list)
    plugins_loaded: trio.Event = attrs.field(factory=trio.Event)
    """Set once the first load of every enabled plugin has finished (loaded or refused)."""
    plugin_tokens: PluginTokens = attrs.field(factory=PluginTokens)
    """The tokens minted for plugins' ``ctx.api`` (in memory only)."""

    def __attrs_post_init__(self) -> None:
        self.host.token_broker = self.plugin_tokens

    def serving(self, url: str) -> None:
        """The daemon serves at ``url``: what plugins' API clients call from now on."""
        self.url = self.plugin_tokens.url = url

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
        # What the daemon holds once started (its imports, the app, the loaded plugins)
        # lives as long as it does: out of the collector's reach. A full collection
        # otherwise walks all of it, a pause of about 10 ms on this machine that any
        # request (or a plugin's restart) may meet. (What a reload or an unload frees of
        # it is left to reference counting.)
        gc.freeze()
        refused = sorted(name for name, problem in results.items() if problem is not None)
        log.info(
            "ready: %d plugins loaded%s", len(results) - len(refused),
            f", not loaded: {', '.join(refused)}" if refused else "",
            extra={"loaded": len(results) - len(refused), "not_loaded": refused},
        )  # fmt: skip

    async def reload(self) -> dict[str, str | None]:
        """SIGHUP: read the configuration again and rescan plugins. The plugin overrides,
        ``require_signed`` and ``in_process_allowed`` apply at once; the other settings
        (the socket, the home, the restart budget, the fork server...) wait for a
        restart, and the log says which changed."""
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
                in_process_allowed=fresh.in_process_allowed,
                default_grants=fresh.default_grants,
            )
            self.config = attrs.evolve(fresh, home=self.config.home)
        results = await self.host.load_all()
        self.reloads += 1
        return results


_RELOADED = frozenset(
    {"overrides", "require_signed", "in_process_allowed", "default_grants", "source", "host",
     "port"}
)  # fmt: skip
"""Settings that SIGHUP applies (host and port are the running socket's, by design)."""


def host_config(config: DaemonConfig) -> HostConfig:
    """The plugin host's settings: the daemon's fields marked ``FOR_HOST`` (``home`` and
    the ``[plugins]`` table), by name; the host's other settings keep their defaults."""
    return HostConfig(
        **{
            field.name: getattr(config, field.name)
            for field in attrs.fields(DaemonConfig)
            if field.metadata.get(FOR_HOST)
        }
    )


@contextlib.asynccontextmanager
async def open_daemon(
    config: DaemonConfig, *, config_path: Path | None = None
) -> AsyncIterator[Daemon]:
    """The runtime and the plugin host (no plugin loaded yet: see ``load_plugins``)."""
    config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    runtime_config = RuntimeConfig(
        state_path=str(config.home / "events.db"), durable_topics=config.durable_topics,
        event_history=config.replay_buffer,
    )  # fmt: skip
    async with (
        open_runtime(config=runtime_config) as runtime,
        open_plugin_host(runtime, host_config(config), discover=False) as host,
    ):
        yield Daemon(config, runtime, host, Metrics(runtime), config_path=config_path)


async def poll_providers(daemon: Daemon, interval: float, stop: trio.Event) -> None:
    """Every ``interval`` seconds, ask each provider to publish the state changes it
    sees (instances started or stopped outside the daemon)."""
    if not interval or math.isinf(interval):
        return
    while not stop.is_set():
        with trio.move_on_after(interval):
            await stop.wait()
            return
        for provider in daemon.host.providers_of(SERVICE_TYPE):
            try:
                await daemon.host.call_service(provider, "poll", None, timeout=interval)
            except (ActorError, PluginError):
                pass  # an outage shows in the plugin's readiness and dead letters
