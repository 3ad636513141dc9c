"""Loading: a plugin described (in a process of its own when it is isolated), checked,
then started as a supervised actor under ``/plugins``; unloading, enabling, disabling."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from supervision import ProbeKind, SupervisionError

from .._core._cell import HealthProbe
from .._core._exceptions import (
    PluginError,
    PluginNotFound,
    PluginRefused,
)
from .._isolation._describe import DescribeFailed, describe, describe_spec
from .._isolation._drivers import InProcessDriver, SubprocessDriver
from .._isolation._forkserver import ForkServer
from .._isolation._kernel import controls, sandbox_spec, weaker
from .._isolation._launch import (
    ENV_ALLOWLIST,
    PluginCounters,
    PluginDriver,
    PluginLaunch,
    allowed_environment,
)
from .._isolation._plugin_actor import PluginActor
from .._isolation._spare import WarmSpares
from .._plugins._loader import PluginImportError, load_plugin_class
from .._plugins._manifest import Manifest
from .._plugins._model import (
    Isolation,
    PluginMetadata,
)
from .._plugins._routes import routes_overlap
from ._base import (
    _DISABLED,
    PLUGINS_PATH,
    DiscoveredPlugin,
    PluginStatus,
    _Loaded,
    _log,
    _Prepared,
)
from ._install import changed_file
from ._state import PluginRecord
from ._status import _Status


class _Loading(_Status):
    __slots__ = ()

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

        # Side by side: a plugin whose import is slow (or hangs until describe_timeout) does
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
            and self._effective(manifest.metadata, self._discovered[name].source).isolation
            is Isolation.SUBPROCESS
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
        if discovered.source != "entry_point":
            await self._check_files(discovered, record)
        await self._require_granted(discovered)
        return discovered

    async def _check_files(self, discovered: DiscoveredPlugin, record: PluginRecord | None) -> None:
        """A folder plugin's files must be those its install verified. Under
        ``require_signed`` a plugin whose files changed, or that no signed install put
        there (copied into the folder by hand, or by anything else), is refused; without
        it, a change is logged and the plugin loads (the files are the operator's)."""
        name, folder = discovered.name, Path(discovered.location)
        recorded = record.files if record is not None and record.path == str(folder) else None
        if recorded is None or (record is not None and record.signed_by is None):
            if self.config.require_signed:
                raise PluginRefused(
                    name,
                    "require_signed is on and it was not installed from a signed archive"
                    " (no install record holds its files' digests and signer);"
                    " install it with `cws plugin install ARCHIVE`",
                )
            if recorded is None:
                return
        changed = await trio.to_thread.run_sync(changed_file, folder, recorded)
        if changed is None:
            return
        if self.config.require_signed:
            raise PluginRefused(
                name,
                f"its file {changed} since it was installed; install or update it from a"
                " signed archive",
            )
        _log.warning(
            "plugin %s: its file %s since it was installed (loaded anyway: require_signed"
            " is off)", name, changed, extra={"plugin": name, "changed": changed},
        )  # fmt: skip

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
        try:
            launch = self._with_class(launch)
        except PluginRefused as exc:
            await self.state.log(name, "load_failed", exc.reason)
            raise
        if launch.metadata.isolation is Isolation.SUBPROCESS:
            await self._start_fork_server()
        path = f"{PLUGINS_PATH}/{name}"
        loaded = _Loaded(discovered, launch, PluginCounters(), path)
        if (
            self.config.warm_spares != "never"
            and launch.metadata.isolation is Isolation.SUBPROCESS
            and self._nursery is not None
        ):
            loaded.spares = WarmSpares(
                name, self._nursery, self.config.spare_delay,
                from_run=1 if self.config.warm_spares == "always" else 2,
            )  # fmt: skip
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
            if loaded.spares is not None:
                loaded.spares.close()
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
                    if theirs.method == spec.method and routes_overlap(spec.path, theirs.path):
                        raise PluginRefused(
                            name,
                            f"{spec.method} {spec.path} overlaps {theirs.method} {theirs.path}"
                            f" of plugin {other!r}: a request could match both; routes of"
                            " different plugins must not overlap",
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
            services = self._services(launch, loaded.discovered.source)
            if launch.metadata.isolation is Isolation.SUBPROCESS:
                return SubprocessDriver(
                    launch, self.runtime.publish, loaded.counters, self._fork_server,
                    loaded.spares, services=services,
                )  # fmt: skip
            return InProcessDriver(launch, self.runtime.publish, loaded.counters, services)

        return make_driver

    def _with_class(self, launch: PluginLaunch) -> PluginLaunch:
        """``launch`` with its plugin's class, imported here (its code runs in the
        daemon) if it is an in-process folder plugin: called only once every check has
        passed, just before it starts."""
        if launch.metadata.isolation is not Isolation.IN_PROCESS or launch.plugin_class:
            return launch
        try:
            plugin_class = load_plugin_class(launch.entry, launch.folder)
        except PluginImportError as exc:
            raise PluginRefused(launch.metadata.name, f"its code is broken: {exc}") from exc
        return attrs.evolve(launch, plugin_class=plugin_class)

    async def _launch(self, discovered: DiscoveredPlugin) -> tuple[PluginLaunch, Manifest]:
        """Describe ``discovered``: an entry point by its class (pip installed its code),
        a folder plugin in a process of its own, whatever its isolation, so that none
        of its code runs in the daemon before it is accepted."""
        override = self.config.overrides.get(discovered.name, {})
        manifest = discovered.manifest
        assert manifest is not None
        metadata = self._effective(manifest.metadata, discovered.source)
        if metadata.isolation is not manifest.metadata.isolation and "isolation" not in override:
            _log.warning(
                "plugin %s asks to run in the daemon's process; it runs as a subprocess"
                " (add it to [plugins] in_process_allowed to let it in)", discovered.name,
                extra={"plugin": discovered.name, "isolation": metadata.isolation.value},
            )  # fmt: skip
        folder = Path(discovered.location) if discovered.source != "entry_point" else None
        self._check_sandbox(metadata)
        plugin_class = discovered.plugin_class
        # What the operator lets through of the daemon's environment (cloud credentials).
        allowlist = ENV_ALLOWLIST + tuple(override.get("env", ()))
        try:
            if plugin_class is not None:
                capabilities = plugin_class.capabilities
            else:
                # Importing its module runs its code: do it in a process of its own.
                spec = describe_spec(
                    metadata.name, manifest.entry, folder, attrs.asdict(metadata.limits)
                )
                if self.config.sandbox:
                    # Its import is its code: confined as its runs will be, but with
                    # nothing to write.
                    spec["sandbox"] = sandbox_spec(
                        metadata, folder, None, self.config.home, self.protected_ports
                    )
                env = allowed_environment(metadata.name, allowlist)
                capabilities = await describe(spec, env, timeout=self.config.describe_timeout)
        except DescribeFailed as exc:
            raise PluginRefused(discovered.name, f"its code is broken: {exc}") from exc
        problem = capabilities.group_problem(metadata.concurrency)
        if problem is not None:
            raise PluginRefused(discovered.name, problem)
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
            sandboxed=self.config.sandbox,
            cgroups=self.cgroups if self.config.sandbox else None,
            home=self.config.home,
            protected_ports=self.protected_ports,
        )
        return launch, manifest

    def _check_sandbox(self, metadata: PluginMetadata) -> None:
        """Refuse a subprocess plugin whose sandbox needs a control this machine lacks,
        unless the operator allows weaker sandboxes."""
        if metadata.isolation is not Isolation.SUBPROCESS or not self.config.sandbox:
            return
        missing = weaker(controls(metadata, self.kernel))
        if missing and not self.config.allow_weaker_sandbox:
            raise PluginRefused(
                metadata.name,
                "its sandbox needs what this machine cannot enforce ("
                + "; ".join(missing)
                + "); set [plugins] allow_weaker_sandbox = true to run it anyway",
            )
        for problem in missing:
            _log.warning(
                "plugin %s runs with a weaker sandbox: %s", metadata.name, problem,
                extra={"plugin": metadata.name},
            )  # fmt: skip

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
        if loaded.spares is not None:
            loaded.spares.close()
        await self.runtime.stop(loaded.path, finish_handler=not force)
        if self.token_broker is not None:
            self.token_broker.revoke(name)  # each run revokes its own; this makes sure
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
