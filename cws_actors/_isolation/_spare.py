"""A warm spare per subprocess plugin: the next run's process, forked ahead of time.

A sandboxed start is a chain (the keeper, its PID namespace and cgroup, the init, the
runner, Landlock and seccomp, the plugin's import) that costs milliseconds a restart
would otherwise wait for. So once a run of a plugin is up, the host forks the next one
from the fork server, ``delay`` seconds later (off the start's critical path): it
confines itself and imports the plugin's module as any run does, says hello, and waits
for the ``init`` frame, which only the run that adopts it sends. Its plugin's
``initialize`` and ``start`` run only then: until adopted, the only plugin code it has
run is its module's top level, confined.

A spare is adopted only once it has said hello, by a run of the same launch object (a
restart; an update or a grant change makes a new launch) whose spec and environment are
those it was forked with; any other run discards it (killed) and starts cold, and so
does a run that finds its spare still starting. A spare that dies while it waits is
logged and not replaced until the next run is up; unload and the host's close kill it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
import trio

from ._forkserver import ForkedProcess, ForkServer, ForkServerGone
from ._launch import KILL_WAIT, PluginLaunch, remove_cgroup_soon
from ._protocol import FrameReader, ProtocolError


def spare_key(spec: dict[str, Any], env: dict[str, str]) -> str:
    return json.dumps([spec, env], sort_keys=True, default=str)


@attrs.frozen
class SpareProcess:
    """An adopted spare: its process, the reader of its output, and the hello it sent
    (the run sends ``init`` next)."""

    process: ForkedProcess
    reader: FrameReader
    hello: dict[str, Any]


@attrs.define(eq=False)
class _Spare:
    launch: PluginLaunch
    key: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    """Cancelled to discard it: its task kills it."""
    waiting: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    """Cancelled when a run adopts it: its task lets go of it."""
    process: ForkedProcess | None = None
    reader: FrameReader | None = None
    hello: dict[str, Any] | None = None
    taken: bool = False


@attrs.define(eq=False)
class WarmSpares:
    """The warm spare of one loaded plugin (at most one at a time)."""

    name: str
    nursery: trio.Nursery
    """Where spares wait: the host's, so that a spare outlives the run that made it."""
    delay: float = 1.0
    """How long after a run is up its spare is forked."""
    from_run: int = 1
    """The first run after which a spare is kept: 1 from the first, 2 once the plugin
    has restarted (or been updated), so that a stable plugin costs no second process."""
    _runs: int = 0
    _spare: _Spare | None = None
    _closed: bool = False

    @property
    def ready(self) -> bool:
        """A spare has said hello and waits for a run."""
        spare = self._spare
        return bool(spare and spare.hello and spare.process and not spare.process.has_ended())

    @property
    def pid(self) -> int | None:
        """The spare's process (its keeper when sandboxed), once it is ready."""
        spare = self._spare
        return spare.process.pid if self.ready and spare and spare.process else None

    def replenish(
        self, launch: PluginLaunch, server: ForkServer, spec: dict[str, Any], env: dict[str, str]
    ) -> None:
        """Fork a spare for the next run of ``launch`` (unless one matching waits);
        called once each run is up."""
        self._runs += 1
        if self._closed or not server.running or self._runs < self.from_run:
            return
        key = spare_key(spec, env)
        current = self._spare
        if current is not None:
            if current.launch is launch and current.key == key:
                return
            self._discard()
        spare = self._spare = _Spare(launch, key)
        self.nursery.start_soon(self._keep, spare, server, spec, env)

    def take(
        self, launch: PluginLaunch, spec: dict[str, Any], env: dict[str, str]
    ) -> SpareProcess | None:
        """The spare for a run of ``launch`` with ``spec`` and ``env``, now the caller's
        to own; None when there is none ready to adopt. A spare that does not match is
        discarded, and so is one still starting: nobody reads its stderr before it is
        adopted, so one that writes much at import could wait for ever (and a start
        from the fork server is as quick as what is left of its own)."""
        spare = self._spare
        if spare is None:
            return None
        process, reader, hello = spare.process, spare.reader, spare.hello
        if (
            spare.launch is not launch
            or spare.key != spare_key(spec, env)
            or process is None
            or reader is None
            or hello is None
            or process.has_ended()
        ):
            self._discard()
            return None
        spare.taken = True
        self._spare = None
        spare.waiting.cancel()  # its task lets go of it
        return SpareProcess(process, reader, hello)

    def close(self) -> None:
        """Discard the spare and make no more (the plugin is unloaded)."""
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.scope.cancel()  # its task kills it

    async def _keep(
        self, spare: _Spare, server: ForkServer, spec: dict[str, Any], env: dict[str, str]
    ) -> None:
        log = logging.getLogger(f"cws.plugin.{self.name}")
        with spare.scope:
            await trio.sleep(self.delay)
            try:
                spare.process = process = await server.spawn(spec, env)
            except ForkServerGone:
                if self._spare is spare:
                    self._spare = None
                return
            spare.reader = FrameReader(process.stdout)
            try:
                spare.hello = await spare.reader.receive()
            except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            if spare.hello is not None:
                with spare.waiting:
                    await process.wait()
            if not spare.taken:
                said = b""
                with trio.move_on_after(0.1):  # why it died, if it said
                    said = await process.stderr.receive_some(4096)
                    await process.wait()
                log.warning(
                    "the warm spare of plugin %r exited (code %s) before a run needed it;"
                    " its next restart starts a process of its own%s",
                    self.name, process.returncode,
                    f": {said.decode(errors='replace').strip()}" if said.strip() else "",
                )  # fmt: skip
        if self._spare is spare:
            self._spare = None
        if spare.process is None or spare.taken:
            return  # adopted: the run owns it now
        process = spare.process
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(KILL_WAIT):
                    await process.wait()
            process._close_pipes()
        if process.returncode is not None:
            remove_cgroup_soon(spare.launch, process.pid)
