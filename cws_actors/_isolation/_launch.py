"""What the host hands a plugin actor: its launch (metadata, capabilities, config,
environment), the messages it takes, its counters, and the driver interface."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from .._plugins._api import APIToken
from .._plugins._model import (
    Capabilities,
    Health,
    Plugin,
    PluginMetadata,
)
from ._cgroup import Cgroups

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "HOME")
"""Environment variables a subprocess plugin inherits; nothing else of the daemon's
environment (tokens, cloud credentials) reaches it unless the operator adds it."""


TERMINATE_GRACE = 1.0
"""After a plugin's graceful stop window: how long SIGTERM has before SIGKILL."""
KILL_WAIT = 1.0
"""How long to wait for a process to go after SIGKILL (the kernel takes milliseconds)."""


CGROUP_REMOVAL_DELAY = 0.05
"""Seconds after a run's end before its cgroup's removal starts."""
CGROUP_REMOVAL_WAIT = 60.0
"""How long the removal waits for the run's last processes to go (past it, what is left
is removed when the host closes, or at the daemon's next start)."""


def remove_cgroup_soon(launch: PluginLaunch, pid: int) -> None:
    """Remove the cgroup of the sandboxed run of ``launch`` whose keeper was ``pid``
    (it has exited): the kernel ends the rest of its PID namespace within moments. From
    a task of its own, so that a restart or a stop need not wait for it (a leftover is
    removed when the host closes, or at the daemon's next start)."""
    cgroups = launch.cgroups
    if cgroups is None or not launch.sandboxed:
        return
    name = launch.metadata.name

    def removed() -> bool:
        """Gone (or beyond removing now: logged); False while a process dies in it.
        Never raises: the retry below is a system task, whose error would end Trio."""
        try:
            return cgroups.remove(name, pid)
        except OSError as exc:
            logging.getLogger(f"cws.plugin.{name}").warning(
                "the cgroup of plugin %r's run could not be removed (%s); the daemon"
                " removes what is left when it stops or starts", name, exc,
            )  # fmt: skip
            return True

    async def remove_later() -> None:
        # Not at once: the kernel is still ending the run's processes (the first rmdir
        # would fail), and a restart is starting the next run; the removal can wait.
        await trio.sleep(CGROUP_REMOVAL_DELAY)
        # rmdir of a cgroup v1 memory controller waits for the kernel (an RCU grace
        # period: milliseconds), so it runs on a worker thread, never the event loop.
        pause = 0.005
        with trio.move_on_after(CGROUP_REMOVAL_WAIT):
            # The kernel's state, outside Trio's view (cgroup v1 has no event for
            # "empty" that an unprivileged reader gets): poll it, bounded. The run's
            # processes end at idle priority (``_keeper.idle``): on a busy machine
            # that may take a while, so the polls space out.
            while not await trio.to_thread.run_sync(removed):
                await trio.sleep(pause)
                pause = min(pause * 2, 1.0)

    trio.lowlevel.spawn_system_task(remove_later)


def plugin_environment(launch: PluginLaunch) -> dict[str, str]:
    """The whole environment of a subprocess plugin: the allow-list, and its name."""
    return allowed_environment(launch.metadata.name, launch.env_allowlist)


def allowed_environment(name: str, allowlist: tuple[str, ...] = ENV_ALLOWLIST) -> dict[str, str]:
    """The daemon's variables in ``allowlist``, and ``CWS_PLUGIN_NAME``: all that any
    process running plugin code gets of the daemon's environment."""
    env = {key: os.environ[key] for key in allowlist if key in os.environ}
    env["CWS_PLUGIN_NAME"] = name
    return env


async def _no_secret(name: str) -> str:
    raise PermissionError(f"this plugin's sandbox grants it no secret (asked for {name!r})")


async def _no_token() -> APIToken | None:
    return None


@attrs.frozen
class PluginServices:
    """What the host offers one run of a plugin beyond the bus: its granted secrets and
    tokens for the daemon's API (both checked against its grants at each use)."""

    read_secret: Callable[[str], Awaitable[str]] = _no_secret
    """The value of a secret the plugin asks for and was granted; PermissionError (or
    LookupError: not set) otherwise."""
    mint_token: Callable[[], Awaitable[APIToken | None]] = _no_token
    """A fresh token for the daemon's API scoped to the granted ``apis`` (None: none)."""
    release: Callable[[], None] = lambda: None
    """Revoke every token minted for this run (it has stopped)."""
    daemon_port: int | None = None
    """The daemon's TCP port on 127.0.0.1 when the plugin may call its API (it was
    granted ``apis``), else None: the sandbox lets it connect there, and nowhere else
    on the daemon's host unless its ``network`` says so."""


@attrs.frozen
class PluginCall:
    """A message to a plugin actor: ``kind`` is ``cli``, ``api`` or ``status``."""

    kind: str
    handler: str = ""
    payload: Any = None


@attrs.define(eq=False)
class PluginCounters:
    """Kept across the plugin's restarts, for its status."""

    calls: int = 0
    errors: int = 0
    events: int = 0
    published: int = 0
    """Events the plugin put on the bus: its messages out."""
    last_error: str | None = None
    pid: int | None = None
    """The current (or last) process of a subprocess plugin: for status only, since the
    number may belong to another process once that one has exited."""
    kill: Callable[[], None] | None = None
    """SIGKILL the current process (through its handle, never by pid); None while no
    process of the plugin runs."""


@attrs.frozen
class PluginLaunch:
    """Everything needed to start one run of a plugin."""

    metadata: PluginMetadata
    capabilities: Capabilities
    entry: str
    folder: Path | None
    config: Mapping[str, Any]
    data_dir: Path
    plugin_class: type[Plugin] | None = None
    env_allowlist: tuple[str, ...] = ENV_ALLOWLIST
    stop_timeout: float = 3.0
    """How long the plugin's ``stop`` may take before its process is terminated."""
    start_timeout: float = 30.0
    """How long a start (handshake, ``initialize`` and ``start``) may take; a start that
    takes longer fails as a crash."""
    sandboxed: bool = True
    """A subprocess plugin confines itself (:mod:`._kernel`) before its code runs."""
    home: Path | None = None
    """The daemon's home, never readable by a plugin (even below a path it may read)."""
    protected_ports: tuple[int, ...] = ()
    """The daemon's own ports, never reachable by a plugin (``network = "loopback"``)."""
    cgroups: Cgroups | None = None
    """Where each sandboxed run gets a cgroup of its own (None: no usable cgroup)."""

    def sandbox_spec(self, daemon_port: int | None = None) -> dict[str, Any] | None:
        """What the runner needs to confine itself; None when unsandboxed.
        ``daemon_port``: the daemon's port, when the plugin may call its API."""
        if not self.sandboxed:
            return None
        from ._kernel import sandbox_spec

        return sandbox_spec(
            self.metadata, self.folder, self.data_dir, self.home, self.protected_ports,
            daemon_port,
        )  # fmt: skip

    @property
    def stop_budget(self) -> float:
        """The longest a run takes to stop: the graceful window, SIGTERM's grace, the wait
        after SIGKILL, and a margin. The actor's shutdown deadline."""
        return self.stop_timeout + TERMINATE_GRACE + KILL_WAIT + 1.0


@attrs.frozen
class SwapLaunch:
    """A message to a plugin actor: start ``launch`` (a new version), switch to it, stop
    the old one. The reply is None on success, or why the new version failed to start
    (the old one then keeps serving, untouched)."""

    launch: PluginLaunch


class PluginDriver(Protocol):
    async def open(self, nursery: trio.Nursery) -> None: ...

    async def close(self) -> None: ...

    async def call(self, handler: str, payload: Any) -> Any: ...

    async def health(self) -> Health: ...

    async def ready(self) -> bool: ...

    async def status(self) -> dict[str, Any]: ...
