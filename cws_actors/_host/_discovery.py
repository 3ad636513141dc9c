"""Discovery: plugins from entry points, the user folder and the system folder."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import trio

from .._core._exceptions import (
    ManifestError,
)
from .._plugins._loader import PluginImportError
from .._plugins._manifest import Manifest, load_manifest
from .._plugins._model import (
    Isolation,
    PluginMetadata,
    api_version_problem,
)
from ._base import ENTRY_POINT_GROUP, DiscoveredPlugin, _HostBase


class _Discovery(_HostBase):
    __slots__ = ()

    async def discover(self) -> list[DiscoveredPlugin]:
        """Scan the entry points, the user folder and the system folder. A broken or
        incompatible plugin is listed with its ``problem``; it never hides the others.
        The user folder wins over the system folder, both over entry points."""
        found: dict[str, DiscoveredPlugin] = {}
        if self.config.entry_points:
            # On a worker thread: scanning the installed distributions and importing
            # the plugins' classes takes a tenth of a second, which the event loop (a
            # daemon starting to serve) should not wait for.
            for plugin in await trio.to_thread.run_sync(_from_entry_points):
                found[plugin.name] = plugin
        for source, folder in (("system", self.config.system_dir), ("user", self.user_dir)):
            for plugin in await trio.to_thread.run_sync(_from_folder, folder, source):
                found[plugin.name] = plugin
        self._discovered = found
        return sorted(found.values(), key=lambda plugin: plugin.name)


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
