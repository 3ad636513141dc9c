"""The two plugin drivers: in the daemon's process (``InProcessDriver``) and in a
process of its own, spoken to over the framed protocol (``SubprocessDriver``)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from .._core._bus import Event
from .._core._envelope import Reply
from .._core._exceptions import PluginCallFailed, PluginCrashed
from .._plugins._api import PluginAPI
from .._plugins._model import (
    APIRequest,
    Health,
    HealthStatus,
    Plugin,
    PluginContext,
)
from ._cgroup import usage as cgroup_usage
from ._forkserver import ForkedProcess, ForkServer, ForkServerGone
from ._keeper import cpu_times, folder_size, process_tree
from ._launch import (
    KILL_WAIT,
    TERMINATE_GRACE,
    PluginCounters,
    PluginLaunch,
    PluginServices,
    plugin_environment,
    remove_cgroup_soon,
)
from ._log import StderrLog
from ._protocol import (
    PROTOCOL_VERSION,
    RUNNER_REQUESTS,
    FrameReader,
    FrameWriter,
    ProtocolError,
    decode_result,
    encode_event,
    encode_request,
)
from ._spare import WarmSpares


@attrs.define(eq=False)
class InProcessDriver:
    launch: PluginLaunch
    publish: Callable[[str, Any], Awaitable[Any]]
    counters: PluginCounters = attrs.field(factory=lambda: PluginCounters())
    services: PluginServices = attrs.field(factory=PluginServices)
    _plugin: Plugin | None = None
    _context: PluginContext | None = None

    async def open(self, nursery: trio.Nursery) -> None:
        launch = self.launch
        plugin_class = launch.plugin_class
        assert plugin_class is not None, "an in-process launch carries its class"
        launch.data_dir.mkdir(parents=True, exist_ok=True)
        api = PluginAPI(launch.metadata.name, self.services.mint_token)
        api.prime(await self.services.mint_token())  # minted at each start
        self._context = PluginContext(
            launch.metadata.name, launch.data_dir, launch.config, self._publish,
            read_secret=self.services.read_secret, api=api,
        )  # fmt: skip
        self._plugin = plugin_class()
        await self._plugin.initialize(self._context, launch.config)
        await self._plugin.start(self._context)

    async def _publish(self, topic: str, payload: Any = None) -> Any:
        self.counters.published += 1
        return await self.publish(topic, payload)

    async def close(self) -> None:
        try:
            if self._plugin is not None and self._context is not None:
                await self._plugin.stop(self._context)
        finally:
            self.services.release()  # its API tokens die with the run
            if self._context is not None:
                with trio.CancelScope(shield=True):
                    await self._context.api.aclose()

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
    spares: WarmSpares | None = None
    """Where the plugin's warm spare waits (adopted by this run if it matches)."""
    services: PluginServices = attrs.field(factory=PluginServices)
    _nursery: trio.Nursery | None = None
    _process: trio.Process | ForkedProcess | None = None
    _reader: FrameReader | None = None
    _writer: FrameWriter | None = None
    _ids: Iterator[int] = attrs.field(factory=itertools.count)
    _pending: dict[int, Reply] = attrs.field(factory=dict)
    """Requests sent and not answered yet, by id (protocol 2 multiplexes them)."""
    _broken: str | None = None
    """Why no answer can come any more (the process closed its output)."""
    _closing: bool = False
    _killed: bool = False
    """Killed on purpose (a forced unload): the actor is being stopped, so a call in
    flight waits for that instead of reporting a crash (which would restart it)."""
    _opened: bool = False
    """Until the handshake and init succeed, a dying process fails ``open`` instead of
    crashing the actor (so that a hot reload can roll back)."""
    _cgroup_removed: bool = False

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
            # Set when it may call the daemon's API: the sandbox lets it reach this port.
            # (Its token comes in the init frame, over the pipe, never in argv or env.)
            "daemon_port": self.services.daemon_port,
            "sandbox": launch.sandbox_spec(self.services.daemon_port),
        }
        if spec["sandbox"] is not None and launch.cgroups is not None:
            spec["cgroup"] = launch.cgroups.spec()  # the keeper makes its run's own
        env = plugin_environment(launch)
        process: trio.Process | ForkedProcess
        server = self.fork_server if self.fork_server and self.fork_server.running else None
        spare = self.spares.take(launch, spec, env) if self.spares and server else None
        if spare is not None:
            process = await nursery.start(self._own_forked, spare.process)
        elif server is not None:
            try:
                process = await nursery.start(self._run_forked, server, spec, env)
            except ForkServerGone:
                process = await self._start_python(nursery, spec, env)
        else:
            process = await self._start_python(nursery, spec, env)
        self._process = process
        self.counters.pid = process.pid
        self.counters.kill = self.kill
        assert process.stdout is not None and process.stderr is not None
        self._reader = spare.reader if spare else FrameReader(process.stdout)
        assert process.stdin is not None
        self._writer = FrameWriter(process.stdin)
        nursery.start_soon(self._log_stderr, process.stderr)
        nursery.start_soon(self._watch, process)
        hello = spare.hello if spare else await self._receive_hello()
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
        self._nursery = nursery
        nursery.start_soon(self._read_answers)
        token = await self.services.mint_token()  # minted at each start
        await self._request({"type": "init", "api_token": attrs.asdict(token) if token else None})
        self._opened = True
        if self.spares is not None and server is not None:
            self.spares.replenish(launch, server, spec, env)  # the next run's process

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
        await self._own_forked(process, task_status)

    async def _own_forked(
        self,
        process: ForkedProcess,
        task_status: trio.TaskStatus[ForkedProcess] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started(process)
        try:
            async with trio.open_nursery() as reading:
                reading.start_soon(process.read_status)
                await process.wait_ended()
                reading.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if process.ended is None:
                    await self._deliver_cancel(process)
                    await process.wait()
                await process.stdin.aclose()

    def send_fault_signal(self, signum: int) -> bool:
        """Signal the process for an injected fault: unlike ``kill``, a SIGKILL here is a
        crash, which the watcher reports. False when no process runs, or (for any signal
        but SIGCONT, which ends a pause) when it is being stopped."""
        process = self._process
        if process is None or _ended(process) is not None:
            return False
        if self._closing and signum != signal.SIGCONT:
            return False
        if signum in (signal.SIGSTOP, signal.SIGCONT) and self.launch.sandboxed:
            # Nobody can pass SIGSTOP on (it cannot be caught): stop the plugin's own
            # processes (the runner and everything below the init), and let them go on
            # together. Not the keeper and its init, which must stay able to end the
            # run (a stopped init would not act on its keeper's death).
            for pid in process_tree(process.pid)[2:]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            return True
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
        try:
            await self._close()
        finally:
            self.services.release()  # its API tokens die with the run
            self._remove_cgroup_soon()

    def _remove_cgroup_soon(self) -> None:
        """Remove the run's cgroup once its processes are gone (:func:`remove_cgroup_soon`)."""
        process = self._process
        if process is None or _ended(process) is None or self._cgroup_removed:
            return
        self._cgroup_removed = True
        remove_cgroup_soon(self.launch, process.pid)

    async def _close(self) -> None:
        process = self._process
        if process is None or _ended(process) is not None:
            return  # crashed: its keeper (if any) is exiting, in no hurry
        steps = [(process.kill, KILL_WAIT)]
        if not self._killed:
            steps.insert(0, (process.terminate, TERMINATE_GRACE))
            with trio.move_on_after(self.launch.stop_timeout) as waited:
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(self._ask_to_stop)
                    # Its exit, not the answer, ends the wait: the runner exits once it
                    # has answered, and when the actor's stop has cancelled the task
                    # that reads answers (with the actor's other tasks), none is read.
                    await process.wait()
                    waiting.cancel_scope.cancel()
            if waited.cancelled_caught:
                logging.getLogger(f"cws.plugin.{self.launch.metadata.name}").warning(
                    "plugin %r did not stop within %g s; terminating its process",
                    self.launch.metadata.name, self.launch.stop_timeout,
                )  # fmt: skip
        for signal_it, grace in steps:
            if process.returncode is not None:
                return
            signal_it()
            with trio.move_on_after(grace):
                await process.wait()

    async def _ask_to_stop(self) -> None:
        try:
            await self._request({"type": "stop"})
        except (PluginCrashed, PluginCallFailed, trio.BrokenResourceError):
            pass  # it is going anyway; the escalation in _close makes sure

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
        """Send ``message`` with an id of its own and wait for the answer with that id;
        other requests go and come meanwhile. Cancelled (the ask's deadline, the HTTP
        client gone), it tells the runner, which cancels the plugin's handler."""
        process, writer = self._process, self._writer
        assert process is not None and writer is not None
        if self._broken is not None:
            await self._unless_killed()
            raise PluginCrashed(self._broken)
        request_id = next(self._ids)
        answer = self._pending[request_id] = Reply()
        try:
            try:
                # Shielded: a frame cut in the middle would break every later one. It ends
                # at the latest when the process does (the stop escalates to SIGKILL).
                with trio.CancelScope(shield=True):
                    await writer.send({**message, "id": request_id})
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._unless_killed()
                raise PluginCrashed(self._describe_exit("the pipe broke")) from exc
            try:
                reply: dict[str, Any] = await answer.wait()
            except trio.Cancelled:
                if not answer.done and self._broken is None and _ended(process) is None:
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(1),
                        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                    ):
                        await writer.send({"type": "cancel", "id": request_id})
                raise
        finally:
            del self._pending[request_id]
        if reply["type"] == "error":
            raise PluginCallFailed(self.launch.metadata.name, reply["error_type"], reply["message"])
        return reply.get("value")

    async def _receive_hello(self) -> dict[str, Any]:
        assert self._reader is not None
        frame = await self._next_frame()
        if frame is None:
            await self._unless_killed()
            raise PluginCrashed(self._broken or "the plugin process said nothing")
        return frame

    async def _next_frame(self) -> dict[str, Any] | None:
        """The next frame (publishes are passed on to the bus here), or None when the
        process closed its output or broke the framing (``_broken`` says which)."""
        assert self._reader is not None
        while True:
            try:
                frame = await self._reader.receive()
            except ProtocolError as exc:
                self._broken = f"plugin {self.launch.metadata.name!r}: {exc}"
                return None
            if frame is None:
                if self._process is not None:
                    with trio.move_on_after(1):
                        await _wait_ended(self._process)
                self._broken = self._describe_exit("it closed its output")
                return None
            if frame["type"] in RUNNER_REQUESTS and self._nursery is not None:
                self._nursery.start_soon(self._answer_runner, frame)
                continue
            if frame["type"] != "publish":
                return frame
            self.counters.published += 1
            await self.publish(frame["topic"], frame.get("payload"))

    async def _answer_runner(self, frame: dict[str, Any]) -> None:
        """Answer the runner's request (``secret``, ``api_token``) with an ``answer``
        frame of the same id: the value, or the error the plugin raises."""
        answer: dict[str, Any] = {"type": "answer", "id": frame.get("id")}
        try:
            if frame["type"] == "secret":
                answer["value"] = await self.services.read_secret(str(frame.get("name")))
            else:
                token = await self.services.mint_token()
                answer["value"] = attrs.asdict(token) if token is not None else None
        except (PermissionError, LookupError) as exc:
            kind = "PermissionError" if isinstance(exc, PermissionError) else "LookupError"
            answer.update(error_type=kind, message=str(exc))
        except Exception as exc:
            logging.getLogger("cws.plugins").exception(
                "plugin %s: cannot answer its %s request", self.launch.metadata.name,
                frame["type"], extra={"plugin": self.launch.metadata.name},
            )  # fmt: skip
            answer.update(
                error_type="RuntimeError",
                message=f"the daemon could not answer ({type(exc).__name__}; see its log)",
            )
        process, writer = self._process, self._writer
        if process is None or writer is None or _ended(process) is not None:
            return
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await writer.send(answer)

    async def _read_answers(self) -> None:
        """Hand each answer to the request with its id, until the output ends; then
        every request still waiting fails as a crash (unless the plugin was killed on
        purpose: those wait for the stop that follows)."""
        while (frame := await self._next_frame()) is not None:
            answer = self._pending.get(frame.get("id", -1))
            if answer is not None:
                answer.set_value(frame)
            # else: the answer to a request cancelled meanwhile; nobody waits for it
        if self._killed:
            return
        for answer in list(self._pending.values()):
            answer.set_error(PluginCrashed(self._broken or "the plugin process is gone"))

    async def _unless_killed(self) -> None:
        if self._killed:
            await trio.sleep_forever()  # the stop that follows the kill cancels this

    async def _watch(self, process: trio.Process | ForkedProcess) -> None:
        try:
            await _wait_ended(process)
        finally:
            # Exited, or cancelled because this driver is stopping it (the owner of the
            # process kills it): never signal it again.
            if self.counters.kill == self.kill:
                self.counters.kill = None
        self._remove_cgroup_soon()
        if self._opened and not self._closing:
            raise PluginCrashed(self._describe_exit("it exited unexpectedly"))

    def _describe_exit(self, what: str) -> str:
        name = self.launch.metadata.name
        code = _ended(self._process) if self._process is not None else None
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
        """The plugin's processes together (its keeper, runner and their children):
        memory, CPU seconds, how many; and its data folder's size."""
        process = self._process
        if process is None or _ended(process) is not None:
            return {}
        usage: dict[str, Any] = {"pid": process.pid}
        rss, ticks, count = 0, 0, 0
        for pid in process_tree(process.pid):
            times = cpu_times(pid)
            if times is None:
                continue  # exiting; its usage is no longer there to read
            ticks += times[0] + times[1]  # its own and its reaped children's: cpu_seconds
            count += 1
            for line in _read(f"/proc/{pid}/status").splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        usage["memory_rss_kb"] = rss
        usage["cpu_seconds"] = ticks / os.sysconf("SC_CLK_TCK")
        usage["processes"] = count
        usage["data_bytes"] = folder_size(str(self.launch.data_dir))
        if self.launch.metadata.limits.disk_mb:
            usage["data_limit_bytes"] = self.launch.metadata.limits.disk_mb * 1024 * 1024
        if self.launch.cgroups is not None and self.launch.sandboxed:
            usage |= cgroup_usage(self.launch.cgroups, self.launch.metadata.name, process.pid)
        return usage


def _ended(process: trio.Process | ForkedProcess) -> int | None:
    """How the run ended, if it has: a sandboxed run's keeper says so before its exit."""
    return process.ended if isinstance(process, ForkedProcess) else process.returncode


async def _wait_ended(process: trio.Process | ForkedProcess) -> int:
    if isinstance(process, ForkedProcess):
        return await process.wait_ended()
    return await process.wait()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
