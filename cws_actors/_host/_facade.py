"""The plugin host's facade, :class:`PluginHost`: its sections put together, the calls
into plugins' CLI and API faces, and :func:`open_plugin_host`."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio

from .._core._envelope import Source
from .._core._exceptions import (
    ActorError,
    PluginError,
)
from .._core._runtime import Runtime
from .._isolation._cgroup import prepare as prepare_cgroups
from .._isolation._launch import PluginCall
from .._plugins._model import (
    APIEndpointSpec,
    APIRequest,
    APIResult,
    CLICommandSpec,
    CommandResult,
)
from ._base import PLUGINS_PATH, HostConfig, _log
from ._install import (
    recover,
)
from ._management import _Management
from ._state import StateStore


@attrs.define(eq=False)
class PluginHost(_Management):
    """Open with :func:`open_plugin_host`.

    Its sections live beside this module: discovery (``_discovery``), loading
    (``_loading``), installation with staging and roll-back (``_management`` and
    ``_install``), status (``_status``); the calls into plugins' faces are here.
    """

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

    def find_command(self, argv: Sequence[str]) -> tuple[str, CLICommandSpec] | None:
        """The loaded plugin and command spec that ``argv`` names (as
        :meth:`execute_cli` would run it), or None."""
        match = self._find_command(list(argv))
        return None if match is None else match[:2]

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


@contextlib.asynccontextmanager
async def open_plugin_host(
    runtime: Runtime, config: HostConfig, *, discover: bool = True
) -> AsyncIterator[PluginHost]:
    """Open the host: the state database under ``config.home``, the ``/plugins`` subtree
    (plugins are quarantined, never escalated, so one cannot take the others down), and
    the plugins discovered unless ``discover`` is false (``load_all`` discovers them: the
    daemon serves first, then discovers and loads)."""
    config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    for step in await trio.to_thread.run_sync(recover, config.home / "plugins"):
        _log.warning("%s", step)
    state = await StateStore.open(config.home / "state.db")
    host: PluginHost | None = None
    try:
        await runtime.spawn_supervisor(
            "plugins", max_restarts=config.max_restarts, period=config.restart_period
        )
        host = PluginHost(runtime, config, state)
        if config.sandbox and config.cgroups:
            # Before the fork server exists: a delegated cgroup v2 moves the daemon and
            # its children into a leaf first.
            host.cgroups, host.cgroup_problem = await trio.to_thread.run_sync(
                prepare_cgroups, config.home
            )
        else:
            host.cgroup_problem = "turned off in the host's configuration"
        if host.cgroups is None and config.sandbox:
            _log.info("plugins run without cgroups: %s", host.cgroup_problem)
        if discover:
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
            if host is not None and host.cgroups is not None:
                await trio.to_thread.run_sync(host.cgroups.close)
