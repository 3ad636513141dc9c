"""Status: what the host knows of each plugin, and the service calls of loaded ones."""

from __future__ import annotations

from typing import Any

import attrs

from supervision import ChildState

from .._core._envelope import Source
from .._core._exceptions import (
    PluginError,
    PluginNotFound,
)
from .._isolation._kernel import controls
from .._isolation._launch import PluginCall, PluginCounters
from .._plugins._model import Isolation
from ._base import _LIFECYCLE, PluginStatus
from ._grants import _Grants


class _Status(_Grants):
    __slots__ = ()

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
            spare_pid=loaded.spares.pid if loaded is not None and loaded.spares else None,
            sandbox=attrs.evolve(
                await self.sandbox_grants(discovered),
                controls=self._sandbox_report(discovered, loaded),
            ),
        )

    def _sandbox_report(self, discovered: Any, loaded: Any) -> dict[str, str] | None:
        if loaded is not None:
            launch = loaded.launch
            if launch.metadata.isolation is not Isolation.SUBPROCESS:
                return None
            if not launch.sandboxed:
                return {"sandbox": "not available (turned off in the host's configuration)"}
            return controls(launch.metadata, self.kernel)
        manifest = getattr(discovered, "manifest", None)
        if manifest is None:
            return None
        metadata = self._effective(manifest.metadata, discovered.source)
        if metadata.isolation is not Isolation.SUBPROCESS:
            return None
        return controls(metadata, self.kernel)

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
