"""The plugin host: discovery, loading as supervised actors, and management."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from supervision import Backoff, ChildState, ProbeKind, SupervisionError

from .._core._cell import HealthProbe
from .._core._envelope import Source
from .._core._exceptions import (
    ActorError,
    ManifestError,
    PluginError,
    PluginNotFound,
    PluginRefused,
)
from .._core._runtime import Runtime
from .._isolation._describe import DescribeFailed, describe, describe_spec
from .._isolation._forkserver import ForkServer
from .._isolation._plugin_actor import (
    ENV_ALLOWLIST,
    InProcessDriver,
    PluginActor,
    PluginCall,
    PluginCounters,
    PluginDriver,
    PluginLaunch,
    SubprocessDriver,
    SwapLaunch,
    allowed_environment,
)
from .._packaging._archive import ArchiveLimits
from .._plugins._loader import PluginImportError, load_plugin_class
from .._plugins._manifest import Manifest, load_manifest
from .._plugins._model import (
    APIEndpointSpec,
    APIRequest,
    APIResult,
    CLICommandSpec,
    CommandResult,
    Isolation,
    Plugin,
    PluginMetadata,
    api_version_problem,
)
from ._install import (
    InstallRefused,
    StagedPlugin,
    TrustPolicy,
    backup_path,
    discard,
    recover,
    stage,
)
from ._state import StateStore

ENTRY_POINT_GROUP = "cws_actors.plugins"
_LIFECYCLE = frozenset({"initialize", "start", "stop", "health", "ready", "status"})
PLUGINS_PATH = "/plugins"

_log = logging.getLogger("cws.plugins")
"""Each install, load, unload, update, enable, disable and remove at INFO, with the
``plugin`` (and ``version``...) in the record's ``extra``; a plugin that cannot load at
ERROR. Its crashes and restarts are its supervisor's to log (logger ``supervision``)."""


@attrs.frozen
class DiscoveredPlugin:
    """A plugin found by discovery, loadable or not (``problem`` says why not)."""

    name: str
    version: str
    source: str
    """``entry_point``, ``user`` or ``system``."""
    location: str
    isolation: Isolation
    manifest: Manifest | None = None
    plugin_class: type[Plugin] | None = None
    problem: str | None = None


@attrs.frozen
class PluginStatus:
    name: str
    version: str
    source: str
    isolation: str
    enabled: bool
    loaded: bool
    state: str
    """``not_loaded``, ``refused`` or the actor's state (``running``, ``restarting``...)."""
    ready: bool
    restarts: int
    last_exit: str | None
    calls: int
    errors: int
    events: int
    published: int
    last_error: str | None
    problem: str | None
    path: str | None
    pid: int | None = None
    """The plugin's process (subprocess isolation), while it runs."""
    last_restart_at: float | None = None
    """``trio.current_time()`` of its actor's latest restart by its supervisor, or None."""


@attrs.frozen
class HostConfig:
    """Where plugins live and how the operator overrides them.

    ``overrides`` maps a plugin name to what the operator sets over its manifest:
    ``{"config": {...}, "isolation": "subprocess", "limits": {"memory_mb": 256}}``.
    ``require_signed`` (off by default, so that people can install the plugins they
    write) refuses every install that is not an archive signed by a trusted key; an
    archive that comes with a signature is verified whatever the policy.
    """

    home: Path
    system_dir: Path = Path("/usr/lib/cws/plugins")
    entry_points: bool = True
    overrides: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    probe_period: float | None = None
    ready_timeout: float = 30.0
    start_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """How long a plugin's start (its handshake, ``initialize`` and ``start``; and
    reading a subprocess plugin's capabilities) may take before it fails as a crash."""
    fork_server: bool = True
    """Fork subprocess plugins from a process that has Python and Trio imported already
    (a restart in milliseconds); False starts a fresh interpreter for each run."""
    require_signed: bool = False
    archive_limits: ArchiveLimits = attrs.field(factory=ArchiveLimits)
    max_restarts: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    restart_period: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    """A plugin restarted more than ``max_restarts`` times within ``restart_period``
    seconds is quarantined (visible in the API, cleared by hand); the others go on."""
    backoff: Backoff = attrs.field(factory=lambda: Backoff(0.1, 5.0))
    """The delay between a plugin's restarts when its manifest sets none: exponential
    from 100 ms, capped at 5 s, with full jitter, reset after a minute of running."""

    @property
    def trust(self) -> TrustPolicy:
        return TrustPolicy(
            trusted_keys_dir=self.home / "trusted_keys",
            revoked_keys=self.home / "revoked_keys",
            require_signed=self.require_signed,
            archive_limits=self.archive_limits,
        )


_DISABLED = "it is disabled; enable it first"

_SWAP_MARGIN = 10.0
"""Seconds the host's ask waits for a swap beyond the longest the swap can take."""


@attrs.define(eq=False)
class _Switch:
    unsettled: bool = False
    """The swap was asked for and not answered: the actor may run either version."""


@attrs.define(eq=False)
class _Loaded:
    discovered: DiscoveredPlugin
    launch: PluginLaunch
    counters: PluginCounters
    path: str


@attrs.frozen
class _Prepared:
    """A plugin described before the host lock was taken (or refused then)."""

    discovered: DiscoveredPlugin
    launch: PluginLaunch | None = None
    manifest: Manifest | None = None
    refused: PluginRefused | None = None


@attrs.define(eq=False)
class PluginHost:
    """Open with :func:`open_plugin_host`."""

    runtime: Runtime
    config: HostConfig
    state: StateStore
    _discovered: dict[str, DiscoveredPlugin] = attrs.field(factory=dict)
    _loaded: dict[str, _Loaded] = attrs.field(factory=dict)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _nursery: trio.Nursery | None = None
    _fork_server: ForkServer | None = None
    _fork_server_starting: trio.Event | None = None
    _loading: set[str] = attrs.field(factory=set)
    _starting: dict[str, trio.Event] = attrs.field(factory=dict)
    """Plugins whose actor is starting (outside the host lock), set when settled."""
    _starting_launches: dict[str, PluginLaunch] = attrs.field(factory=dict)
    route_guard: Callable[[str, APIEndpointSpec], str | None] | None = None
    """Set by the daemon: why a plugin's endpoint may not be mounted (it would shadow a
    core route or another plugin's), or None. A plugin with such an endpoint is refused
    at load."""

    @property
    def user_dir(self) -> Path:
        return self.config.home / "plugins"

    # ------------------------------------------------------------------ discovery

    async def discover(self) -> list[DiscoveredPlugin]:
        """Scan the entry points, the user folder and the system folder. A broken or
        incompatible plugin is listed with its ``problem``; it never hides the others.
        The user folder wins over the system folder, both over entry points."""
        found: dict[str, DiscoveredPlugin] = {}
        if self.config.entry_points:
            for plugin in _from_entry_points():
                found[plugin.name] = plugin
        for source, folder in (("system", self.config.system_dir), ("user", self.user_dir)):
            for plugin in await trio.to_thread.run_sync(_from_folder, folder, source):
                found[plugin.name] = plugin
        self._discovered = found
        return sorted(found.values(), key=lambda plugin: plugin.name)

    # ------------------------------------------------------------------ loading

    async def load(self, name: str) -> PluginStatus:
        """Start the plugin as a supervised actor at ``/plugins/<name>`` and wait (up to
        ``HostConfig.ready_timeout``) for its readiness. A plugin that is not ready by
        then stays loaded, and its status says ``ready=False``: a plugin whose cloud is
        down at start recovers by itself when the cloud comes back.

        Raises:
            PluginNotFound: not discovered.
            PluginRefused: disabled, incompatible, broken, or failing to start.
        """
        try:
            prepared = await self._prepare(name)
            async with self._lock:
                start = await self._reserve(name, prepared)
            if start is not None:
                await start()  # outside the lock: plugins start side by side
            else:
                await self._settle(name)  # another load of it is starting it
            if name not in self._loaded:
                raise PluginRefused(name, "it failed to start (a load of it under way failed)")
        except PluginRefused as exc:
            if exc.reason != _DISABLED:  # the operator's choice, not a failure
                _log.error("%s", exc, extra={"plugin": name, "reason": exc.reason})
            raise
        with trio.move_on_after(self.config.ready_timeout):
            with contextlib.suppress(SupervisionError):
                await self.runtime.wait_ready(f"{PLUGINS_PATH}/{name}")
        return await self.status(name)

    @property
    def loading(self) -> list[str]:
        """The plugins :meth:`load_all` has still to load, in its order."""
        return sorted(self._loading)

    async def load_all(self) -> dict[str, str | None]:
        """Load every enabled plugin; return each one's problem (None when loaded).

        The fork server starts beside the first loads (it imports while they describe
        their plugins), not before them."""
        results: dict[str, str | None] = {}
        await self.discover()
        records = await self.state.plugins()
        names = []
        for name in sorted(self._discovered):
            record = records.get(name)
            if record is not None and not record.enabled:
                results[name] = "disabled"
                _log.info("plugin %s is disabled: not loading it", name, extra={"plugin": name})
            else:
                names.append(name)
        if any(self._wants_subprocess(name) for name in names):
            self._start_fork_server_soon()
        self._loading.update(names)

        async def load_one(name: str) -> None:
            try:
                await self.load(name)
                results[name] = None
            except PluginError as exc:
                results[name] = str(exc)
            finally:
                self._loading.discard(name)

        # Side by side: a plugin whose import is slow (or hangs until start_timeout) does
        # not hold up the others; only their checks take the host lock, one at a time.
        try:
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(load_one, name)
        finally:
            self._loading.difference_update(names)
        return {name: results[name] for name in sorted(results)}

    def _wants_subprocess(self, name: str) -> bool:
        manifest = self._discovered[name].manifest
        return (
            manifest is not None
            and self._effective(manifest.metadata).isolation is Isolation.SUBPROCESS
        )

    async def _prepare(self, name: str) -> _Prepared | None:
        """What loading ``name`` needs that may take long (describing a subprocess
        plugin imports its code in a process of its own), done before the host lock is
        taken so that other loads go on meanwhile. None if it is loaded already."""
        if name in self._loaded:
            return None
        try:
            discovered = await self._loadable(name)
        except PluginError:
            return None  # judged again under the lock, where it counts
        try:
            launch, manifest = await self._launch(discovered)
        except PluginRefused as exc:
            # Final only if the plugin is still the one described once the lock is ours
            # (a remove or an update may be changing its files meanwhile).
            return _Prepared(discovered, refused=exc)
        return _Prepared(discovered, launch, manifest)

    async def _loadable(self, name: str) -> DiscoveredPlugin:
        discovered = self._discovered.get(name)
        if discovered is None:
            await self.discover()
            discovered = self._discovered.get(name)
        if discovered is None:
            raise PluginNotFound(f"no plugin named {name!r} was discovered")
        if discovered.problem is not None:
            raise PluginRefused(name, discovered.problem)
        record = (await self.state.plugins()).get(name)
        if record is not None and not record.enabled:
            raise PluginRefused(name, _DISABLED)
        return discovered

    async def _settle(self, name: str) -> None:
        """Wait until a start of ``name`` under way has succeeded or failed."""
        starting = self._starting.get(name)
        if starting is not None:
            await starting.wait()

    async def _reserve(
        self, name: str, prepared: _Prepared | None
    ) -> Callable[[], Awaitable[None]] | None:
        """With the host lock held: check that ``name`` may load, claim its routes, and
        return what starts it (None if it is loaded or starting already). The start runs
        without the lock, so that one plugin's start (a cloud SDK's import, a second or
        more) does not hold up the others; whatever needs ``name`` meanwhile (unload,
        update, remove, disable) waits for it with ``_settle``."""
        if name in self._loaded or name in self._starting:
            return None
        discovered = await self._loadable(name)
        if prepared is not None and prepared.discovered is discovered:
            if prepared.refused is not None:
                raise prepared.refused
            assert prepared.launch is not None and prepared.manifest is not None
            launch, manifest = prepared.launch, prepared.manifest
        else:  # not prepared, or rediscovered meanwhile: its files may have changed
            launch, manifest = await self._launch(discovered)
        self._check_routes(name, launch)
        if name in self._loaded or name in self._starting:
            return None  # another load got there while we described it
        self._starting[name] = trio.Event()
        self._starting_launches[name] = launch

        async def start() -> None:
            try:
                await self._start(name, discovered, launch, manifest)
            finally:
                del self._starting_launches[name]
                self._starting.pop(name).set()

        return start

    async def _start(
        self, name: str, discovered: DiscoveredPlugin, launch: PluginLaunch, manifest: Manifest
    ) -> None:
        if launch.metadata.isolation is Isolation.SUBPROCESS:
            await self._start_fork_server()
        path = f"{PLUGINS_PATH}/{name}"
        loaded = _Loaded(discovered, launch, PluginCounters(), path)
        period = self.config.probe_period or manifest.probe_period
        try:
            await self.runtime.spawn(
                # Every run (first start or restart) takes the current version's launch.
                lambda: PluginActor(loaded.launch, self._make_driver(loaded), loaded.counters),
                name=name,
                parent=PLUGINS_PATH,
                restart=manifest.restart,
                mailbox=manifest.mailbox,
                rate_limit=manifest.rate_limit,
                backoff=manifest.backoff or self.config.backoff,
                shutdown=launch.stop_budget,
                probes=[
                    HealthProbe(ProbeKind.LIVENESS, period=period, timeout=period / 2),
                    HealthProbe(
                        ProbeKind.READINESS,
                        period=period,
                        timeout=period / 2,
                        failure_threshold=1,
                    ),
                ],
            )
        except Exception as exc:
            await self.state.log(name, "load_failed", str(exc))
            raise PluginRefused(name, f"it failed to start: {exc}") from exc
        self._loaded[name] = loaded
        await self.state.log(name, "loaded", discovered.version)
        isolation = launch.metadata.isolation.value
        _log.info(
            "loaded plugin %s %s (%s, from %s)", name, discovered.version, isolation,
            discovered.source,
            extra={"plugin": name, "version": discovered.version, "isolation": isolation,
                   "source": discovered.source},
        )  # fmt: skip

    def _check_routes(self, name: str, launch: PluginLaunch) -> None:
        launches = {other: loaded.launch for other, loaded in self._loaded.items()}
        launches |= self._starting_launches
        for spec in launch.capabilities.api_endpoints:
            for other, their_launch in launches.items():
                if other == name:
                    continue
                for theirs in their_launch.capabilities.api_endpoints:
                    if (theirs.method, theirs.path) == (spec.method, spec.path):
                        raise PluginRefused(
                            name, f"{spec.method} {spec.path} is already served by {other!r}"
                        )
            if self.route_guard is not None:
                problem = self.route_guard(name, spec)
                if problem is not None:
                    raise PluginRefused(name, problem)

    def event_patterns(self, name: str) -> list[str]:
        """The topic patterns a loaded plugin handles."""
        loaded = self._loaded.get(name)
        if loaded is None:
            return []
        return [spec.event_type for spec in loaded.launch.capabilities.event_handlers]

    def loaded_names(self) -> list[str]:
        return sorted(self._loaded)

    async def reload(self, name: str) -> PluginStatus:
        """Pick up a plugin's changed files: a user plugin is hot reloaded from its own
        folder (as ``update`` does, with roll-back); any other is unloaded and loaded."""
        current = self._discovered.get(name)
        if current is not None and current.source == "user":
            return await self.update(name, Path(current.location))
        if name in self._loaded:
            await self.unload(name)
        await self.discover()
        return await self.load(name)

    def _start_fork_server_soon(self) -> None:
        """Start the fork server in the background (a load that needs it waits)."""
        if self._nursery is not None and self._fork_server_starting is None:
            self._nursery.start_soon(self._start_fork_server)

    async def _start_fork_server(self) -> None:
        """Return once the fork server runs, or failed to start (then plugins start
        fresh interpreters); a start already under way is waited for, not repeated."""
        if not self.config.fork_server or self._nursery is None:
            return
        if self._fork_server is not None and self._fork_server.running:
            return
        if self._fork_server_starting is not None:
            await self._fork_server_starting.wait()
            return
        self._fork_server_starting = settled = trio.Event()
        self._fork_server = ForkServer()
        env = {key: os.environ[key] for key in ENV_ALLOWLIST if key in os.environ}
        try:
            await self._nursery.start(self._fork_server.run, env)
        except OSError as exc:
            _log.warning(
                "the fork server did not start (%s); plugins start a fresh interpreter", exc
            )
            self._fork_server = None
        finally:
            self._fork_server_starting = None
            settled.set()

    def _make_driver(self, loaded: _Loaded) -> Any:
        def make_driver(launch: PluginLaunch) -> PluginDriver:
            if launch.metadata.isolation is Isolation.SUBPROCESS:
                return SubprocessDriver(
                    launch, self.runtime.publish, loaded.counters, self._fork_server
                )
            return InProcessDriver(launch, self.runtime.publish, loaded.counters)

        return make_driver

    def _effective(self, metadata: PluginMetadata) -> PluginMetadata:
        """The manifest's metadata with the operator's overrides (isolation, limits)."""
        override = self.config.overrides.get(metadata.name, {})
        if "isolation" in override:
            metadata = attrs.evolve(metadata, isolation=Isolation(override["isolation"]))
        if "limits" in override:
            limits = attrs.evolve(metadata.limits, **override["limits"])
            metadata = attrs.evolve(metadata, limits=limits)
        return metadata

    async def _launch(self, discovered: DiscoveredPlugin) -> tuple[PluginLaunch, Manifest]:
        override = self.config.overrides.get(discovered.name, {})
        manifest = discovered.manifest
        assert manifest is not None
        metadata = self._effective(manifest.metadata)
        folder = Path(discovered.location) if discovered.source != "entry_point" else None
        plugin_class = discovered.plugin_class
        # What the operator lets through of the daemon's environment (cloud credentials).
        allowlist = ENV_ALLOWLIST + tuple(override.get("env", ()))
        try:
            if plugin_class is not None:
                capabilities = plugin_class.capabilities
            elif metadata.isolation is Isolation.IN_PROCESS:
                plugin_class = load_plugin_class(manifest.entry, folder)  # it runs here
                capabilities = plugin_class.capabilities
            else:
                # Importing its module runs its code: do it in a process of its own.
                spec = describe_spec(
                    metadata.name, manifest.entry, folder, attrs.asdict(metadata.limits)
                )
                env = allowed_environment(metadata.name, allowlist)
                capabilities = await describe(spec, env, timeout=self.config.start_timeout)
        except (PluginImportError, DescribeFailed) as exc:
            raise PluginRefused(discovered.name, f"its code is broken: {exc}") from None
        launch = PluginLaunch(
            metadata=metadata,
            capabilities=capabilities,
            entry=manifest.entry,
            folder=folder,
            config={**manifest.config, **override.get("config", {})},
            data_dir=self.config.home / "plugin-data" / discovered.name,
            plugin_class=plugin_class,
            start_timeout=self.config.start_timeout,
            env_allowlist=allowlist,
        )
        return launch, manifest

    async def unload(self, name: str, *, force: bool = False) -> None:
        """Stop the plugin's actor; queued calls get ActorStopped. The handler in flight
        may finish within the plugin's stop timeout, unless ``force``: then a subprocess
        plugin is killed at once."""
        async with self._lock:
            await self._unload(name, force=force)

    async def _unload(self, name: str, *, force: bool = False) -> None:
        """``unload`` with the host lock held."""
        await self._settle(name)
        loaded = self._loaded.pop(name, None)
        if loaded is None:
            raise PluginNotFound(f"plugin {name!r} is not loaded")
        kill = loaded.counters.kill
        if force and kill is not None:
            kill()  # through the process's handle: never a pid that may be reused
        await self.runtime.stop(loaded.path, finish_handler=not force)
        await self.state.log(name, "unloaded", "forced" if force else "")
        _log.info(
            "unloaded plugin %s%s", name, " (forced: its process was killed)" if force else "",
            extra={"plugin": name, **({"forced": True} if force else {})},
        )  # fmt: skip

    async def enable(self, name: str) -> PluginStatus:
        """Enable (persisted) and load it."""
        await self.state.set_enabled(name, True)
        _log.info("enabled plugin %s", name, extra={"plugin": name})
        return await self.load(name)

    async def disable(self, name: str) -> None:
        """Disable (persisted across daemon restarts) and unload it if loaded."""
        async with self._lock:  # one step: a concurrent load cannot bring it back between
            await self._settle(name)
            if name in self._loaded:
                await self._unload(name)
            await self.state.set_enabled(name, False)
        _log.info("disabled plugin %s", name, extra={"plugin": name})

    # ------------------------------------------------------------------ management

    async def install(self, source: Path, *, signature: Path | None = None) -> PluginStatus:
        """Install a plugin from a folder or a ``.cwsplugin`` archive into the user
        plugin folder (it is not loaded: ``load`` or ``enable`` it next).

        The archive is checked (paths, links, sizes), its signature verified (given, or
        found beside it as ``<archive>.minisig``), its manifest, API version and code
        checked, all in a staging folder; then one rename puts it in place. Refused, or
        killed half way, nothing changes.

        Raises:
            PluginRefused: saying why; nothing was installed.
        """
        async with self._lock:
            staged = await self._stage(source, signature)
            try:
                existing = self._discovered.get(staged.name)
                if existing is not None and existing.problem is None:
                    raise PluginRefused(
                        staged.name,
                        f"version {existing.version} is already installed ({existing.source});"
                        " update it instead",
                    )
                target = self.user_dir / staged.name
                if target.exists():
                    await trio.to_thread.run_sync(discard, target)  # a broken copy
                staged.folder.rename(target)
            except BaseException:
                await trio.to_thread.run_sync(discard, staged.folder)
                raise
            await self._record(staged, target)
            await self.discover()
        _log.info(
            "installed plugin %s %s from %s%s", staged.name, staged.version, source,
            f" (signed by {staged.signed_by})" if staged.signed_by else "",
            extra={"plugin": staged.name, "version": staged.version, "signed_by": staged.signed_by},
        )  # fmt: skip
        return await self.status(staged.name)

    async def update(
        self, name: str, source: Path, *, signature: Path | None = None
    ) -> PluginStatus:
        """Hot reload ``name`` with the version in ``source`` (checked as ``install``
        checks it). A loaded plugin keeps its actor, mailbox and path: the new version
        starts, routing switches to it, then the old version stops; messages sent
        meanwhile wait and reach the new one. If the new version fails to start (or
        starts unhealthy) the old one keeps serving and its files are put back.

        Raises:
            PluginNotFound: ``name`` is not installed.
            PluginRefused: the new version is unusable; the old one is untouched.
        """
        async with self._lock:
            await self._settle(name)
            current = self._discovered.get(name)
            if current is None:
                raise PluginNotFound(f"no plugin named {name!r} is installed; install it")
            if current.source != "user":
                raise PluginRefused(
                    name,
                    f"it is a {current.source.replace('_', ' ')} plugin; update it with the"
                    " tool that installed it (pip for entry points, the system's packages)",
                )
            staged = await self._stage(source, signature)
            target, backup = self.user_dir / name, backup_path(self.user_dir, name)
            try:
                if staged.name != name:
                    raise PluginRefused(name, f"the new version's manifest names {staged.name!r}")
                await trio.to_thread.run_sync(discard, backup)
                target.rename(backup)
            except BaseException:  # refused or cancelled: the staged copy goes
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(discard, staged.folder)
                raise
            staged.folder.rename(target)
            switch = _Switch()
            try:
                await self._switch(name, target, switch)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(discard, target)
                    backup.rename(target)
                    await self.discover()
                    if switch.unsettled:
                        problem = await self._restart_old_version(name, exc)
                        if isinstance(exc, ActorError):
                            raise PluginRefused(name, problem) from exc
                raise
            await trio.to_thread.run_sync(discard, backup)
            await self._record(staged, target)
        _log.info(
            "updated plugin %s from %s to %s%s", name, current.version, staged.version,
            "" if name in self._loaded else " (not loaded: the new version starts at its load)",
            extra={"plugin": name, "version": staged.version, "previous": current.version},
        )  # fmt: skip
        return await self.status(name)

    async def _switch(self, name: str, folder: Path, switch: _Switch) -> None:
        (discovered,) = await trio.to_thread.run_sync(_from_plugin_dir, folder, "user")
        if discovered.problem is not None:
            raise PluginRefused(name, discovered.problem)
        loaded = self._loaded.get(name)
        if loaded is None:
            self._discovered[name] = discovered
            return
        launch, _ = await self._launch(discovered)
        # The actor bounds the swap itself (the new version's start, then one stop), so
        # this wait is longer than the swap can be: the actor answers first.
        timeout = launch.start_timeout + launch.stop_budget + _SWAP_MARGIN
        switch.unsettled = True
        problem = await self.runtime.lookup(loaded.path).ask(SwapLaunch(launch), timeout=timeout)
        switch.unsettled = False
        if problem is not None:
            await self.state.log(name, "update_failed", problem)
            _log.warning(
                "plugin %s: version %s failed to start (%s); version %s keeps running",
                name, discovered.version, problem, loaded.discovered.version,
                extra={"plugin": name, "version": discovered.version, "reason": problem},
            )  # fmt: skip
            raise PluginRefused(
                name,
                f"version {discovered.version} failed to start ({problem});"
                f" version {loaded.discovered.version} keeps running",
            )
        loaded.launch, loaded.discovered = launch, discovered
        self._discovered[name] = discovered
        topics = tuple(dict.fromkeys(e.event_type for e in launch.capabilities.event_handlers))
        self.runtime.bus.unsubscribe_actor(loaded.path)
        if topics:
            self.runtime.bus.subscribe_actor(loaded.path, topics)

    async def _restart_old_version(self, name: str, error: BaseException) -> str:
        """The swap's outcome is unknown (its ask failed or was cancelled): the actor may
        run either version. Restart it with the launch the host keeps (the old one, whose
        files are back), so that both agree. Return what happened, for the caller."""
        loaded = self._loaded.get(name)
        if loaded is None:
            return f"{name!r} was unloaded meanwhile"
        version = loaded.discovered.version
        reason = str(error) or type(error).__name__
        await self.state.log(name, "update_failed", f"no answer from the swap ({reason})")
        _log.warning(
            "plugin %s: no answer from the switch to its new version (%s); restarting"
            " version %s", name, reason, version, extra={"plugin": name, "reason": reason},
        )  # fmt: skip
        with trio.move_on_after(loaded.launch.start_timeout + 2 * loaded.launch.stop_budget):
            try:
                await self.runtime.restart(loaded.path)
            except ActorError as exc:
                return f"the switch failed ({reason}); restarting version {version}: {exc}"
            return f"the switch failed ({reason}); version {version} was restarted"
        return f"the switch failed ({reason}); version {version} is still restarting"

    async def remove(self, name: str, *, purge_data: bool = False) -> None:
        """Unload and delete a user-installed plugin (and, with ``purge_data``, its
        data folder). Entry-point and system plugins belong to their package manager.

        Raises:
            PluginNotFound: ``name`` is not installed.
            PluginRefused: it is not a user plugin.
        """
        current = self._discovered.get(name)
        if current is None:
            raise PluginNotFound(f"no plugin named {name!r} is installed")
        if current.source != "user":
            raise PluginRefused(
                name,
                f"it is a {current.source.replace('_', ' ')} plugin; remove it with the tool"
                " that installed it",
            )
        async with self._lock:  # one step: a concurrent load cannot bring it back between
            await self._settle(name)
            if name in self._loaded:
                await self._unload(name)
            await trio.to_thread.run_sync(discard, Path(current.location))
            if purge_data:
                await trio.to_thread.run_sync(discard, self.config.home / "plugin-data" / name)
            await self.state.forget(name)
            await self.discover()
        _log.info(
            "removed plugin %s%s", name, " and its data" if purge_data else "",
            extra={"plugin": name, "purge_data": purge_data},
        )  # fmt: skip

    async def history(self, name: str) -> list[Any]:
        """The plugin's install, load, update, enable and failure history (oldest first)."""
        return await self.state.history(name)

    async def _stage(self, source: Path, signature: Path | None) -> StagedPlugin:
        try:
            return await trio.to_thread.run_sync(
                lambda: stage(
                    Path(source),
                    self.user_dir,
                    self.config.trust,
                    signature=signature,
                    effective=self._effective,
                    describe_timeout=self.config.start_timeout,
                )
            )
        except InstallRefused as exc:
            _log.warning(
                "refused %s: %s", source, exc, extra={"source": str(source), "reason": str(exc)}
            )
            raise PluginRefused(Path(source).name, str(exc)) from None

    async def _record(self, staged: StagedPlugin, target: Path) -> None:
        signed = f", signed by {staged.signed_by}" if staged.signed_by else ""
        await self.state.record_install(staged.name, staged.version, "user", str(target))
        await self.state.log(staged.name, "verified", f"{staged.version}{signed}")

    # ------------------------------------------------------------------ status

    async def status(self, name: str) -> PluginStatus:
        discovered = self._discovered.get(name)
        if discovered is None:
            raise PluginNotFound(f"no plugin named {name!r} was discovered")
        record = (await self.state.plugins()).get(name)
        loaded = self._loaded.get(name)
        counters = loaded.counters if loaded is not None else PluginCounters()
        state, ready, restarts, last_exit = "not_loaded", False, 0, None
        last_restart_at = None
        if discovered.problem is not None:
            state = "refused"
        if loaded is not None:
            try:
                node = self.runtime.actors().find(loaded.path)
                state, ready, restarts, last_exit = (
                    node.state, node.ready, node.restarts, node.last_exit
                )  # fmt: skip
                last_restart_at = node.last_restart_at
            except KeyError:
                state = ChildState.STOPPED.value
        return PluginStatus(
            name=name,
            version=discovered.version,
            source=discovered.source,
            isolation=(loaded.launch.metadata.isolation if loaded else discovered.isolation).value,
            enabled=record.enabled if record is not None else True,
            loaded=loaded is not None,
            state=state,
            ready=ready,
            restarts=restarts,
            last_exit=last_exit,
            calls=counters.calls,
            errors=counters.errors,
            events=counters.events,
            published=counters.published,
            last_error=counters.last_error,
            problem=discovered.problem,
            path=loaded.path if loaded is not None else None,
            pid=counters.pid if state == ChildState.RUNNING.value else None,
            last_restart_at=last_restart_at,
        )

    async def statuses(self) -> list[PluginStatus]:
        return [await self.status(name) for name in sorted(self._discovered)]

    async def plugin_status(self, name: str) -> dict[str, Any]:
        """The plugin's own ``status()`` (plus a subprocess plugin's memory and CPU)."""
        loaded = self._require_loaded(name)
        result: dict[str, Any] = await self.runtime.lookup(loaded.path).ask(
            PluginCall("status"), timeout=10
        )
        return result

    def providers_of(self, service_type: str) -> list[str]:
        """The loaded plugins whose capabilities list ``service_type`` (for instance
        ``cloud-provider``), sorted."""
        return [
            name
            for name, loaded in sorted(self._loaded.items())
            if service_type in loaded.launch.capabilities.service_types
        ]

    async def call_service(
        self,
        name: str,
        handler: str,
        payload: Any = None,
        *,
        timeout: float = 60,
        source: Source = Source.HTTP,
    ) -> Any:
        """Call a service handler of a loaded plugin (``list_instances`` of a cloud
        provider), routed through the router like any message.

        Raises:
            PluginNotFound: not loaded.
            ActorError: refused by the router, or HandlerFailed.
        """
        if handler.startswith("_") or handler in _LIFECYCLE:
            raise PluginError(f"{handler!r} is not a service handler")
        loaded = self._require_loaded(name)
        return await self.runtime.lookup(loaded.path).ask(
            PluginCall("service", handler, payload), timeout=timeout, source=source
        )

    # ------------------------------------------------------------------ faces

    def cli_commands(self) -> list[tuple[str, CLICommandSpec]]:
        """Every loaded plugin's CLI commands, as (plugin name, spec)."""
        return [
            (name, spec)
            for name, loaded in sorted(self._loaded.items())
            for spec in loaded.launch.capabilities.cli_commands
        ]

    def api_endpoints(self) -> list[tuple[str, APIEndpointSpec]]:
        return [
            (name, spec)
            for name, loaded in sorted(self._loaded.items())
            for spec in loaded.launch.capabilities.api_endpoints
        ]

    async def execute_cli(
        self, argv: Sequence[str], *, timeout: float = 30, source: Source = Source.CLI
    ) -> CommandResult:
        """Run a plugin command: ``["analytics", "report", "--type", "weekly"]``.

        Unknown commands and bad flags are a CommandResult with exit code 2, like click.
        """
        match = self._find_command(list(argv))
        if match is None:
            return CommandResult(f"unknown command: {shlex.join(argv)}", 2)
        name, spec, rest = match
        try:
            args = _parse_flags(spec, rest)
        except ValueError as exc:
            return CommandResult(f"{spec.full_name}: {exc}", 2)
        loaded = self._require_loaded(name)
        try:
            result = await self.runtime.lookup(loaded.path).ask(
                PluginCall("cli", spec.handler, args), timeout=timeout, source=source
            )
        except ActorError as exc:
            return CommandResult(f"plugin {name!r}: {exc}", 1)
        if not isinstance(result, CommandResult):
            return CommandResult(f"plugin {name!r} returned {type(result).__name__}", 1)
        return result

    async def call_api(
        self,
        name: str,
        spec: APIEndpointSpec,
        request: APIRequest,
        *,
        timeout: float = 30,
        source: Source = Source.HTTP,
    ) -> APIResult:
        """Route an HTTP request to a plugin endpoint (auth is the caller's job).

        Raises:
            ActorError: the router refused it (RateLimited, NotReady...) or the handler
                failed (HandlerFailed).
        """
        loaded = self._require_loaded(name)
        result = await self.runtime.lookup(loaded.path).ask(
            PluginCall("api", spec.handler, request), timeout=timeout, source=source
        )
        if not isinstance(result, APIResult):
            raise PluginError(f"plugin {name!r} endpoint returned {type(result).__name__}")
        return result

    def _find_command(self, argv: list[str]) -> tuple[str, CLICommandSpec, list[str]] | None:
        for words in (2, 1):
            if len(argv) < words:
                continue
            for name, spec in self.cli_commands():
                names = [spec.name, *spec.aliases]
                if words == 2 and spec.parent and argv[0] == spec.parent and argv[1] in names:
                    return name, spec, argv[2:]
                if words == 1 and not spec.parent and argv[0] in names:
                    return name, spec, argv[1:]
        return None

    def _require_loaded(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        if loaded is None:
            raise PluginNotFound(f"plugin {name!r} is not loaded")
        return loaded


def _parse_flags(spec: CLICommandSpec, argv: list[str]) -> dict[str, Any]:
    flags = {flag.name: flag for flag in spec.flags}
    args: dict[str, Any] = {flag.name: flag.default for flag in spec.flags}
    index = 0
    while index < len(argv):
        word = argv[index]
        if not word.startswith("--") or word[2:].partition("=")[0] not in flags:
            raise ValueError(f"unknown argument {word!r}; expected one of --{', --'.join(flags)}")
        key, _, inline = word[2:].partition("=")
        flag = flags[key]
        if flag.type == "bool" and not inline:
            args[key] = True
            index += 1
            continue
        if not inline:
            index += 1
            if index >= len(argv):
                raise ValueError(f"--{key} needs a value")
            inline = argv[index]
        try:
            args[key] = {"int": int, "float": float}.get(flag.type, str)(inline)
        except ValueError:
            raise ValueError(f"--{key} must be {flag.type}, got {inline!r}") from None
        index += 1
    for flag in spec.flags:
        if flag.required and args.get(flag.name) is None:
            raise ValueError(f"--{flag.name} is required")
    return args


def _from_entry_points() -> list[DiscoveredPlugin]:
    found = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        try:
            plugin_class = entry_point.load()
            metadata = getattr(plugin_class, "metadata", None)
            if not isinstance(metadata, PluginMetadata):
                raise PluginImportError(f"{entry_point.value} has no PluginMetadata `metadata`")
            manifest = Manifest(metadata=metadata, entry=entry_point.value)
            problem = api_version_problem(metadata.api_version)
            if metadata.name != name:
                problem = (
                    f"its entry point is named {name!r} but its metadata says {metadata.name!r}"
                )
            found.append(
                DiscoveredPlugin(
                    metadata.name,
                    metadata.version,
                    "entry_point",
                    entry_point.value,
                    metadata.isolation,
                    manifest,
                    plugin_class,
                    problem,
                )
            )
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide others
            found.append(
                DiscoveredPlugin(
                    name,
                    "?",
                    "entry_point",
                    entry_point.value,
                    Isolation.IN_PROCESS,
                    problem=f"its code is broken: {type(exc).__name__}: {exc}",
                )
            )
    return found


def _from_folder(folder: Path, source: str) -> list[DiscoveredPlugin]:
    found: list[DiscoveredPlugin] = []
    if not folder.is_dir():
        return found
    for plugin_dir in sorted(folder.iterdir()):
        if plugin_dir.is_dir() and not plugin_dir.name.startswith("."):
            found.extend(_from_plugin_dir(plugin_dir, source))
    return found


def _from_plugin_dir(plugin_dir: Path, source: str) -> list[DiscoveredPlugin]:
    try:
        manifest = load_manifest(plugin_dir / "plugin.toml")
    except ManifestError as exc:
        return [
            DiscoveredPlugin(
                plugin_dir.name,
                "?",
                source,
                str(plugin_dir),
                Isolation.IN_PROCESS,
                problem=str(exc),
            )
        ]
    metadata = manifest.metadata
    problem = api_version_problem(metadata.api_version)
    if metadata.name != plugin_dir.name:
        problem = f"its folder is named {plugin_dir.name!r} but plugin.toml says {metadata.name!r}"
    return [
        DiscoveredPlugin(
            metadata.name,
            metadata.version,
            source,
            str(plugin_dir),
            metadata.isolation,
            manifest,
            None,
            problem,
        )
    ]


@contextlib.asynccontextmanager
async def open_plugin_host(runtime: Runtime, config: HostConfig) -> AsyncIterator[PluginHost]:
    """Open the host: the state database under ``config.home``, the ``/plugins`` subtree
    (plugins are quarantined, never escalated, so one cannot take the others down)."""
    config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    for step in await trio.to_thread.run_sync(recover, config.home / "plugins"):
        _log.warning("%s", step)
    state = await StateStore.open(config.home / "state.db")
    try:
        await runtime.spawn_supervisor(
            "plugins", max_restarts=config.max_restarts, period=config.restart_period
        )
        host = PluginHost(runtime, config, state)
        await host.discover()
        async with trio.open_nursery() as nursery:
            host._nursery = nursery
            try:
                yield host
            finally:
                with trio.CancelScope(shield=True):
                    for name in list(host._loaded):
                        with contextlib.suppress(PluginError, ActorError):
                            await host.unload(name)
                    await runtime.stop(PLUGINS_PATH)
                host._nursery = None
                nursery.cancel_scope.cancel()  # the fork server goes last
    finally:
        with trio.CancelScope(shield=True):
            await state.aclose()
