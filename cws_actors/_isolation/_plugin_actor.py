"""A plugin as a supervised actor, run in the daemon (in_process) or in its own Python
process (subprocess), behind one driver interface."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from .._core._actor import Actor
from .._core._bus import Event, topic_matches
from .._core._exceptions import PluginCallFailed, PluginCrashed
from .._plugins._model import (
    APIRequest,
    Capabilities,
    Health,
    HealthStatus,
    Isolation,
    Plugin,
    PluginContext,
    PluginMetadata,
)
from ..faults._spec import FaultKind
from ._forkserver import ForkedProcess, ForkServer, ForkServerGone
from ._log import StderrLog
from ._protocol import (
    PROTOCOL_VERSION,
    FrameReader,
    ProtocolError,
    decode_result,
    encode_event,
    encode_request,
    send_frame,
)

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "HOME")
"""Environment variables a subprocess plugin inherits; nothing else of the daemon's
environment (tokens, cloud credentials) reaches it unless the operator adds it."""


TERMINATE_GRACE = 1.0
"""After a plugin's graceful stop window: how long SIGTERM has before SIGKILL."""
KILL_WAIT = 1.0
"""How long to wait for a process to go after SIGKILL (the kernel takes milliseconds)."""

_PROCESS_FAULTS = frozenset({FaultKind.KILL, FaultKind.PAUSE})
_PROCESS_FAULTS_LIMITED = _PROCESS_FAULTS | {FaultKind.MEMORY_HOG}


def plugin_environment(launch: PluginLaunch) -> dict[str, str]:
    """The whole environment of a subprocess plugin: the allow-list, and its name."""
    return allowed_environment(launch.metadata.name, launch.env_allowlist)


def allowed_environment(name: str, allowlist: tuple[str, ...] = ENV_ALLOWLIST) -> dict[str, str]:
    """The daemon's variables in ``allowlist``, and ``CWS_PLUGIN_NAME``: all that any
    process running plugin code gets of the daemon's environment."""
    env = {key: os.environ[key] for key in allowlist if key in os.environ}
    env["CWS_PLUGIN_NAME"] = name
    return env


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


@attrs.define(eq=False)
class InProcessDriver:
    launch: PluginLaunch
    publish: Callable[[str, Any], Awaitable[Any]]
    counters: PluginCounters = attrs.field(factory=lambda: PluginCounters())
    _plugin: Plugin | None = None
    _context: PluginContext | None = None

    async def open(self, nursery: trio.Nursery) -> None:
        launch = self.launch
        plugin_class = launch.plugin_class
        assert plugin_class is not None, "an in-process launch carries its class"
        launch.data_dir.mkdir(parents=True, exist_ok=True)
        self._context = PluginContext(
            launch.metadata.name, launch.data_dir, launch.config, self._publish
        )
        self._plugin = plugin_class()
        await self._plugin.initialize(self._context, launch.config)
        await self._plugin.start(self._context)

    async def _publish(self, topic: str, payload: Any = None) -> Any:
        self.counters.published += 1
        return await self.publish(topic, payload)

    async def close(self) -> None:
        if self._plugin is not None and self._context is not None:
            await self._plugin.stop(self._context)

    async def call(self, handler: str, payload: Any) -> Any:
        assert self._plugin is not None
        return await getattr(self._plugin, handler)(payload)

    async def health(self) -> Health:
        assert self._plugin is not None
        return await self._plugin.health()

    async def ready(self) -> bool:
        assert self._plugin is not None
        return bool(await self._plugin.ready())

    async def status(self) -> dict[str, Any]:
        assert self._plugin is not None
        return await self._plugin.status()


@attrs.define(eq=False)
class SubprocessDriver:
    """Runs the plugin in ``python -m cws_actors._isolation._runner`` and talks to it."""

    launch: PluginLaunch
    publish: Callable[[str, Any], Awaitable[Any]]
    counters: PluginCounters
    fork_server: ForkServer | None = None
    """Fork the process from this server (milliseconds) instead of starting Python."""
    _process: trio.Process | ForkedProcess | None = None
    _reader: FrameReader | None = None
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _closing: bool = False
    _killed: bool = False
    """Killed on purpose (a forced unload): the actor is being stopped, so a call in
    flight waits for that instead of reporting a crash (which would restart it)."""
    _opened: bool = False
    """Until the handshake and init succeed, a dying process fails ``open`` instead of
    crashing the actor (so that a hot reload can roll back)."""

    async def open(self, nursery: trio.Nursery) -> None:
        launch = self.launch
        launch.data_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "name": launch.metadata.name,
            "entry": launch.entry,
            "folder": str(launch.folder) if launch.folder else None,
            "config": dict(launch.config),
            "data_dir": str(launch.data_dir),
            "limits": attrs.asdict(launch.metadata.limits),
            "parent_pid": os.getpid(),  # the runner exits when this process is gone
        }
        env = plugin_environment(launch)
        process: trio.Process | ForkedProcess
        if self.fork_server is not None and self.fork_server.running:
            try:
                process = await nursery.start(self._run_forked, self.fork_server, spec, env)
            except ForkServerGone:
                process = await self._start_python(nursery, spec, env)
        else:
            process = await self._start_python(nursery, spec, env)
        self._process = process
        self.counters.pid = process.pid
        self.counters.kill = self.kill
        assert process.stdout is not None and process.stderr is not None
        self._reader = FrameReader(process.stdout)
        nursery.start_soon(self._log_stderr, process.stderr)
        nursery.start_soon(self._watch, process)
        hello = await self._receive()
        if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
            raise PluginCrashed(
                f"plugin {launch.metadata.name!r} spoke protocol {hello.get('protocol')!r}"
                f" in its handshake; this host speaks {PROTOCOL_VERSION}"
            )
        if hello.get("name") != launch.metadata.name:
            raise PluginCrashed(
                f"plugin process introduced itself as {hello.get('name')!r},"
                f" expected {launch.metadata.name!r}"
            )
        await self._request({"type": "init"})
        self._opened = True

    async def _start_python(
        self, nursery: trio.Nursery, spec: dict[str, Any], env: dict[str, str]
    ) -> trio.Process:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "cws_actors._isolation._runner", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                check=False,
                deliver_cancel=self._deliver_cancel,
            )
        )
        return process

    async def _run_forked(
        self,
        server: ForkServer,
        spec: dict[str, Any],
        env: dict[str, str],
        task_status: trio.TaskStatus[ForkedProcess] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own a forked process as ``trio.run_process`` owns its child: cancelled, it
        escalates from SIGTERM to SIGKILL, and it returns once the process is gone."""
        process = await server.spawn(spec, env)
        task_status.started(process)
        try:
            await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    await self._deliver_cancel(process)
                    await process.wait()
                await process.stdin.aclose()

    def send_fault_signal(self, signum: int) -> bool:
        """Signal the process for an injected fault: unlike ``kill``, a SIGKILL here is a
        crash, which the watcher reports. False when no process runs, or (for any signal
        but SIGCONT, which ends a pause) when it is being stopped."""
        process = self._process
        if process is None or process.returncode is not None:
            return False
        if self._closing and signum != signal.SIGCONT:
            return False
        process.send_signal(signum)
        return True

    async def memory_hog(self) -> None:
        """Ask the process to allocate until its memory limit ends it (an injected fault)."""
        await self._request({"type": "memory_hog"})

    def kill(self) -> None:
        """SIGKILL the process now, as part of stopping the plugin (not a crash)."""
        self._closing = self._killed = True
        if self._process is not None:
            self._process.kill()

    async def close(self) -> None:
        """Stop the process: ask (``stop_timeout``), then SIGTERM, then SIGKILL. It is
        gone when this returns (within ``launch.stop_budget``), even if its ``stop``
        hangs, so an old version never outlives a hot swap."""
        self._closing = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        steps = [(process.kill, KILL_WAIT)]
        if not self._killed:
            steps.insert(0, (process.terminate, TERMINATE_GRACE))
            with trio.move_on_after(self.launch.stop_timeout):
                try:
                    await self._request({"type": "stop"})
                except (PluginCrashed, PluginCallFailed, trio.BrokenResourceError):
                    pass  # it is going anyway; the escalation below makes sure
                await process.wait()
        for signal_it, grace in steps:
            if process.returncode is not None:
                return
            signal_it()
            with trio.move_on_after(grace):
                await process.wait()

    async def call(self, handler: str, payload: Any) -> Any:
        message: dict[str, Any] = {"type": "call", "handler": handler}
        if isinstance(payload, Event):
            message.update(payload=encode_event(payload), payload_type="event")
        elif isinstance(payload, APIRequest):
            message.update(payload=encode_request(payload), payload_type="request")
        else:
            message["payload"] = payload
        return decode_result(await self._request(message))

    async def health(self) -> Health:
        result = decode_result(await self._request({"type": "health"}))
        return result if isinstance(result, Health) else Health(HealthStatus.CRITICAL, "bad")

    async def ready(self) -> bool:
        return bool(await self._request({"type": "ready"}))

    async def status(self) -> dict[str, Any]:
        status = await self._request({"type": "status"})
        return dict(status or {}) | self._process_usage()

    async def _request(self, message: dict[str, Any]) -> Any:
        process = self._process
        assert process is not None and process.stdin is not None
        async with self._lock:
            try:
                await send_frame(process.stdin, message)
                reply = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._unless_killed()
                raise PluginCrashed(self._describe_exit("the pipe broke")) from exc
        if reply["type"] == "error":
            raise PluginCallFailed(self.launch.metadata.name, reply["error_type"], reply["message"])
        return reply.get("value")

    async def _receive(self) -> dict[str, Any]:
        assert self._reader is not None
        while True:
            try:
                frame = await self._reader.receive()
            except ProtocolError as exc:
                raise PluginCrashed(f"plugin {self.launch.metadata.name!r}: {exc}") from exc
            if frame is None:
                await self._unless_killed()
                if self._process is not None:
                    with trio.move_on_after(1):
                        await self._process.wait()
                raise PluginCrashed(self._describe_exit("it closed its output"))
            if frame["type"] == "publish":
                self.counters.published += 1
                await self.publish(frame["topic"], frame.get("payload"))
                continue
            return frame

    async def _unless_killed(self) -> None:
        if self._killed:
            await trio.sleep_forever()  # the stop that follows the kill cancels this

    async def _watch(self, process: trio.Process | ForkedProcess) -> None:
        try:
            await process.wait()
        finally:
            # Exited, or cancelled because this driver is stopping it (the owner of the
            # process kills it): never signal it again.
            if self.counters.kill == self.kill:
                self.counters.kill = None
        if self._opened and not self._closing:
            raise PluginCrashed(self._describe_exit("it exited unexpectedly"))

    def _describe_exit(self, what: str) -> str:
        name = self.launch.metadata.name
        code = self._process.returncode if self._process is not None else None
        if code is None:
            return f"plugin {name!r} process failed: {what}"
        if code < 0:
            signame = signal.Signals(-code).name
            detail = {
                "SIGKILL": " (killed, or over a limit the kernel enforces)",
                "SIGXCPU": " (over its CPU-seconds limit)",
            }.get(signame, "")
            return f"plugin {name!r} process was killed by {signame}{detail}"
        from ._runner import EXIT_IMPORT, EXIT_MEMORY

        reason = {
            EXIT_MEMORY: " (out of memory under its memory limit)",
            EXIT_IMPORT: " (its code could not be imported; see its log)",
        }.get(code, "")
        return f"plugin {name!r} process exited with code {code}{reason}"

    async def _deliver_cancel(self, process: trio.Process | ForkedProcess) -> None:
        """Cancel: SIGTERM (the runner then calls the plugin's stop), a deadline, SIGKILL."""
        self._closing = True
        process.terminate()
        with trio.move_on_after(self.launch.stop_timeout):
            await process.wait()
            return
        process.kill()

    async def _log_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        log = StderrLog(logging.getLogger(f"cws.plugin.{self.launch.metadata.name}"))
        try:
            async for chunk in stream:
                log.feed(chunk)
        finally:
            log.close()

    def _process_usage(self) -> dict[str, Any]:
        process = self._process
        if process is None or process.returncode is not None:
            return {}
        usage: dict[str, Any] = {"pid": process.pid}
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    usage["memory_rss_kb"] = int(line.split()[1])
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            usage["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, ValueError, IndexError):
            pass  # the process is exiting; its usage is no longer there to read
        return usage


class PluginActor(Actor):
    """The actor at ``/plugins/<name>``: it runs a plugin through its driver."""

    background_tasks = True

    def __init__(
        self,
        launch: PluginLaunch,
        make_driver: Callable[[PluginLaunch], PluginDriver],
        counters: PluginCounters,
    ) -> None:
        self.launch = launch
        self.make_driver = make_driver
        self.counters = counters
        self.driver: PluginDriver | None = None

    def subscriptions(self) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(spec.event_type for spec in self.launch.capabilities.event_handlers)
        )

    async def on_start(self) -> None:
        self.driver = self.make_driver(self.launch)
        with _start_deadline(self.launch):
            await self.driver.open(self.nursery)

    async def on_stop(self) -> None:
        if self.driver is not None:
            await self.driver.close()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, SwapLaunch):
            return await self._swap(message.launch)
        if not isinstance(message, PluginCall):
            raise TypeError(f"a plugin actor takes PluginCall messages, got {message!r}")
        assert self.driver is not None
        self.counters.calls += 1
        try:
            if message.kind == "status":
                return await self.driver.status()
            return await self.driver.call(message.handler, message.payload)
        except Exception as exc:
            self.counters.errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            raise

    async def _swap(self, launch: PluginLaunch) -> str | None:
        """Hot reload: messages arriving meanwhile wait in the mailbox, then reach the new
        version, so none is lost and the actor's path never changes."""
        new = self.make_driver(launch)
        try:
            # The deadline is the actor's own, so that it always answers the host (whose
            # ask waits longer than this and the close below together).
            with _start_deadline(launch):
                await new.open(self.nursery)
                health = await new.health()
            if health.status is HealthStatus.CRITICAL:
                raise RuntimeError(f"its health is critical: {health.message}")
        except Exception as exc:  # noqa: BLE001 - reported to the host, which rolls back
            with trio.CancelScope(shield=True), trio.move_on_after(launch.stop_budget):
                try:
                    await new.close()
                except Exception:  # noqa: BLE001 - the failure above is the one to report
                    pass
            return f"{type(exc).__name__}: {exc}"
        old, self.driver, self.launch = self.driver, new, launch
        if old is not None:
            await old.close()
        return None

    async def _dispatch_event(self, event: Event) -> None:
        assert self.driver is not None
        self.counters.events += 1
        for spec in self.launch.capabilities.event_handlers:
            if topic_matches(spec.event_type, event.topic):
                await self.driver.call(spec.handler, event)

    async def liveness(self) -> bool:
        assert self.driver is not None
        return (await self.driver.health()).status is not HealthStatus.CRITICAL

    # The process faults (cws_actors.faults._injector.FaultableProcess) of a subprocess plugin.

    @property
    def process_fault_kinds(self) -> frozenset[FaultKind]:
        """kill and pause for a subprocess plugin, and memory_hog if it has a memory
        limit (without one the hog would take the machine's memory); none in-process."""
        metadata = self.launch.metadata
        if metadata.isolation is not Isolation.SUBPROCESS:
            return frozenset()
        return _PROCESS_FAULTS_LIMITED if metadata.limits.memory_mb else _PROCESS_FAULTS

    def fault_signal(self, signum: int) -> bool:
        driver = self.driver
        return isinstance(driver, SubprocessDriver) and driver.send_fault_signal(signum)

    async def fault_memory_hog(self) -> None:
        driver = self.driver
        if isinstance(driver, SubprocessDriver):
            await driver.memory_hog()

    async def readiness(self) -> bool:
        assert self.driver is not None
        return await self.driver.ready()


@contextlib.contextmanager
def _start_deadline(launch: PluginLaunch) -> Iterator[None]:
    """Fail a start that takes longer than ``launch.start_timeout`` as a crash, so that a
    plugin stuck in its handshake or ``initialize`` never holds the supervisor (and the
    host) waiting."""
    try:
        with trio.fail_after(launch.start_timeout):
            yield
    except trio.TooSlowError:
        raise PluginCrashed(
            f"plugin {launch.metadata.name!r} did not start within {launch.start_timeout:g}s"
        ) from None
