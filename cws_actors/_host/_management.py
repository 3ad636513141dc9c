"""Management: install, update (hot reload with roll-back) and remove, staged through
``_install`` so that a refused or interrupted change leaves nothing behind."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from supervision import SupervisionError

from .._core._exceptions import (
    ActorError,
    PluginNotFound,
    PluginRefused,
)
from .._isolation._launch import SwapLaunch
from .._plugins._manifest import Manifest
from .._plugins._sandbox import parse_grants
from ._base import _SWAP_MARGIN, PluginStatus, _log, _Switch
from ._discovery import _from_plugin_dir
from ._grants import resolve
from ._install import (
    InstallRefused,
    StagedPlugin,
    backup_path,
    discard,
    stage,
)
from ._loading import _Loading


class _Management(_Loading):
    __slots__ = ()

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

    async def install(
        self, source: Path, *, signature: Path | None = None, grants: Iterable[str] = ()
    ) -> PluginStatus:
        """Install a plugin from a folder or a ``.cwsplugin`` archive into the user
        plugin folder (it is not loaded: ``load`` or ``enable`` it next).

        The archive is checked (paths, links, sizes), its signature verified (given, or
        found beside it as ``<archive>.minisig``), its manifest, API version and code
        checked, all in a staging folder; then one rename puts it in place. Refused, or
        killed half way, nothing changes. What its sandbox asks for must be covered by
        ``grants`` (``all``, kinds, requests) and ``[plugins] default_grants``; what
        ``grants`` cover is stored as granted.

        Raises:
            PluginRefused: saying why; nothing was installed.
        """
        grants = _grants_or_refuse(source, grants)
        async with self._lock:
            await self.discover()  # what is installed now, not at the last scan

            def admit(manifest: Manifest) -> None:  # before any of its code runs
                existing = self._discovered.get(manifest.metadata.name)
                if existing is not None and existing.problem is None:
                    raise PluginRefused(
                        existing.name,
                        f"version {existing.version} is already installed ({existing.source});"
                        " update it instead",
                    )
                self._install_refusal(manifest.metadata, grants)

            staged = await self._stage(source, signature, admit)
            try:
                admit(staged.manifest)  # again: a discovery may have run meanwhile
                target = self.user_dir / staged.name
                if target.exists():
                    await trio.to_thread.run_sync(discard, target)  # a broken copy
                staged.folder.rename(target)
            except BaseException:
                with trio.CancelScope(shield=True):  # cancelled too: still clean up
                    await trio.to_thread.run_sync(discard, staged.folder)
                raise
            await self._record(staged, target)
            requests = staged.manifest.metadata.sandbox.requests()
            await self.state.set_grants(staged.name, resolve(grants, requests), "at install")
            await self.discover()
        _log.info(
            "installed plugin %s %s from %s%s", staged.name, staged.version, source,
            f" (signed by {staged.signed_by})" if staged.signed_by else "",
            extra={"plugin": staged.name, "version": staged.version, "signed_by": staged.signed_by},
        )  # fmt: skip
        return await self.status(staged.name)

    async def update(
        self,
        name: str,
        source: Path,
        *,
        signature: Path | None = None,
        allow_downgrade: bool = False,
        grants: Iterable[str] = (),
    ) -> PluginStatus:
        """Hot reload ``name`` with the version in ``source`` (checked as ``install``
        checks it). A loaded plugin keeps its actor, mailbox and path: the new version
        starts, routing switches to it, then the old version stops; messages sent
        meanwhile wait and reach the new one. If the new version fails to start (or
        starts unhealthy) the old one keeps serving and its files are put back. A
        version lower than the installed one is refused unless ``allow_downgrade``
        (then the history records the downgrade). A version whose sandbox asks for more
        than was granted is refused unless ``grants`` cover the rest.

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
            installed = current.version
            grants = _grants_or_refuse(source, grants)
            previous = await self.state.grants(name)

            def admit(manifest: Manifest) -> None:  # before any of its code runs
                new = manifest.metadata
                if new.name != name:
                    raise PluginRefused(name, f"the new version's manifest names {new.name!r}")
                if not allow_downgrade and _is_lower(new.version, installed):
                    raise PluginRefused(
                        name,
                        f"version {new.version} is lower than the installed {installed};"
                        " pass allow_downgrade (--allow-downgrade) to install it anyway",
                    )
                self._update_refusal(new, previous, grants)

            staged = await self._stage(source, signature, admit)
            # Granted before the new version starts (its token's scopes follow them); put
            # back if it fails. What the new version no longer asks for is dropped.
            requests = staged.manifest.metadata.sandbox.requests()
            kept = resolve([*previous, *grants], requests)
            target, backup = self.user_dir / name, backup_path(self.user_dir, name)
            try:
                await trio.to_thread.run_sync(discard, backup)
                target.rename(backup)
            except BaseException:  # refused or cancelled: the staged copy goes
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(discard, staged.folder)
                raise
            staged.folder.rename(target)
            switch = _Switch()
            try:
                await self.state.set_grants(name, kept, f"at the update to {staged.version}")
                await self._switch(name, target, switch)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self.state.set_grants(name, previous, "the update was rolled back")
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
            if _is_lower(staged.version, current.version):
                await self.state.log(
                    name, "downgraded", f"from {current.version} to {staged.version}"
                )
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
        launch = self._with_class(launch)  # every check passed: its code may run here
        # The actor bounds the swap itself (the new version's start, then one stop), so
        # this wait is longer than the swap can be: the actor answers first.
        timeout = launch.start_timeout + launch.stop_budget + _SWAP_MARGIN
        switch.unsettled = True
        problem = await self.runtime.lookup(loaded.path).ask(SwapLaunch(launch), timeout=timeout)
        switch.unsettled = False
        # The swap held the actor's task: a readiness probe that waited behind it failed,
        # so the actor (whichever version now runs) is out of routing until the next probe.
        # Answer the operator once it serves again, as `load` does.
        with trio.move_on_after(self.config.ready_timeout):
            with contextlib.suppress(SupervisionError):
                await self.runtime.wait_ready(loaded.path)
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

    async def _stage(
        self, source: Path, signature: Path | None, admit: Callable[[Manifest], None]
    ) -> StagedPlugin:
        try:
            return await trio.to_thread.run_sync(
                lambda: stage(
                    Path(source),
                    self.user_dir,
                    self.config.trust,
                    signature=signature,
                    effective=self._effective,
                    admit=admit,
                    describe_timeout=self.config.describe_timeout,
                )
            )
        except InstallRefused as exc:
            _log.warning(
                "refused %s: %s", source, exc, extra={"source": str(source), "reason": str(exc)}
            )
            raise PluginRefused(Path(source).name, str(exc)) from None

    async def _record(self, staged: StagedPlugin, target: Path) -> None:
        signed = f", signed by {staged.signed_by}" if staged.signed_by else ""
        await self.state.record_install(
            staged.name, staged.version, "user", str(target),
            files=staged.files, signed_by=staged.signed_by,
        )  # fmt: skip
        await self.state.log(staged.name, "verified", f"{staged.version}{signed}")


def _grants_or_refuse(source: Path, grants: Iterable[str]) -> tuple[str, ...]:
    try:
        return parse_grants(",".join(grants))
    except ValueError as exc:
        raise PluginRefused(Path(source).name, str(exc)) from None


def _is_lower(version: str, than: str) -> bool:
    """Whether ``version`` is lower than ``than``, compared as release numbers
    (``1.10.0`` > ``1.9.2``); what follows the numbers (``-rc1``) only breaks ties, by
    text, and a version without numbers compares by text."""
    return _version_key(version) < _version_key(than)


def _version_key(version: str) -> tuple[tuple[int, ...], str]:
    match = re.match(r"v?(\d+(?:\.\d+)*)(.*)", version.strip())
    if match is None:
        return (), version
    numbers = tuple(int(part) for part in match.group(1).split("."))
    while numbers and numbers[-1] == 0:  # 1.0 is 1.0.0
        numbers = numbers[:-1]
    # A release sorts after its pre-releases: "" must beat "-rc1".
    return numbers, match.group(2) or "\U0010ffff"
